#include "models/nn/unet.h"

#include <algorithm>
#include <cctype>
#include <limits>
#include <set>

#include "autograd/elementwise.h"
#include "autograd/linalg.h"
#include "core/json_util.h"
#include "kernels/time_embedding.h"

namespace diffuse::nn {

// ---- config -----------------------------------------------------------------------------------

void UNetConfig::validate() const {
  // Upper bounds far above any model that fits a GPU. A config read from a file (a checkpoint's
  // metadata) or the command line may hold any int; within these bounds every size the layers
  // derive from it (4 x base_channels, channels x channels x 9, ...) is far from overflowing.
  constexpr int64_t kMaxChannels = 1 << 16, kMaxImageSize = 1 << 16, kMaxLevels = 16, kMaxResBlocks = 1 << 10,
                    kMaxClasses = 1 << 24;
  DF_CHECK(in_channels > 0 && out_channels > 0 && in_channels <= kMaxChannels && out_channels <= kMaxChannels,
           "UNetConfig: in_channels and out_channels must be in [1, ", kMaxChannels, "]");
  DF_CHECK(image_size > 0 && image_size <= kMaxImageSize, "UNetConfig: image_size must be in [1, ", kMaxImageSize,
           "], got ", image_size);
  DF_CHECK(base_channels > 0, "UNetConfig: base_channels must be positive");
  DF_CHECK(!channel_mult.empty(), "UNetConfig: channel_mult is empty");
  DF_CHECK(static_cast<int64_t>(channel_mult.size()) <= kMaxLevels, "UNetConfig: channel_mult has ",
           channel_mult.size(), " levels, at most ", kMaxLevels, " are supported");
  for (int m : channel_mult) {
    DF_CHECK(m > 0, "UNetConfig: channel_mult entries must be positive");
    DF_CHECK(int64_t{m} * base_channels <= kMaxChannels, "UNetConfig: base_channels ", base_channels, " x channel_mult ",
             m, " is more than ", kMaxChannels, " channels");
  }
  DF_CHECK(num_res_blocks >= 1 && num_res_blocks <= kMaxResBlocks, "UNetConfig: num_res_blocks must be in [1, ",
           kMaxResBlocks, "]");
  DF_CHECK(groups > 0, "UNetConfig: groups must be positive");
  // Finite and within f32's normal range: the GroupNorm ops take it as a float.
  DF_CHECK(norm_eps > 0 && norm_eps <= 1.0 && static_cast<float>(norm_eps) >= std::numeric_limits<float>::min(),
           "UNetConfig: norm_eps must be in (0, 1], got ", norm_eps);
  DF_CHECK(downsample_padding == 0 || downsample_padding == 1,
           "UNetConfig: downsample_padding must be 1 (pad every side) or 0 (diffusers' bottom/right pad), got ",
           downsample_padding);
  DF_CHECK(num_heads > 0 || head_channels > 0, "UNetConfig: num_heads or head_channels must be positive");
  DF_CHECK(dropout >= 0.f && dropout < 1.f, "UNetConfig: dropout must be in [0, 1)");
  DF_CHECK(num_classes >= 0 && num_classes <= kMaxClasses, "UNetConfig: num_classes must be in [0, ", kMaxClasses, "]");
  DF_CHECK(low_res_channels >= 0 && low_res_channels <= kMaxChannels, "UNetConfig: low_res_channels must be in [0, ",
           kMaxChannels, "], got ", low_res_channels);
  if (low_res_channels == 0) {
    DF_CHECK(low_res_size == 0, "UNetConfig: low_res_size ", low_res_size, " without low_res_channels (a "
             "super-resolution model sets both)");
  } else {
    // Nearest-neighbour upsampling and area averaging by 2, repeated (super_res.h).
    DF_CHECK(low_res_size > 0 && low_res_size < image_size, "UNetConfig: low_res_size must be in [1, image_size ",
             image_size, "), got ", low_res_size);
    int f = image_size / low_res_size;
    DF_CHECK(image_size % low_res_size == 0 && (f & (f - 1)) == 0, "UNetConfig: image_size ", image_size,
             " is not low_res_size ", low_res_size, " times a power of two (2, 4, ...)");
  }
  // Every level but the last halves the size: it must stay even until then, or the skip
  // connections of the decoder would not line up.
  int s = image_size;
  for (size_t i = 0; i + 1 < channel_mult.size(); ++i) {
    DF_CHECK(s % 2 == 0, "UNetConfig: image_size ", image_size, " cannot be halved ", channel_mult.size() - 1,
             " times (size ", s, " at level ", i, ")");
    s /= 2;
  }
  for (int m : channel_mult)
    DF_CHECK((m * base_channels) % groups == 0, "UNetConfig: ", m * base_channels, " channels not divisible by groups ",
             groups);
  // With attention, channels split into heads of head_channels, which must divide every level's width.
  if (head_channels > 0 && !attention_resolutions.empty())
    for (int m : channel_mult)
      DF_CHECK((m * base_channels) % head_channels == 0, "UNetConfig: head_channels ", head_channels,
               " does not divide ", m * base_channels);
  validate_context();
}

void UNetConfig::validate_context() const {
  constexpr int64_t kMaxTokens = 1024, kMaxWords = 1 << 20, kMaxContextDim = 1 << 16;
  if (context_dim == 0) {
    DF_CHECK(context_resolutions.empty() && class_names.empty() && vocabulary.empty(),
             "UNetConfig: context_resolutions, class_names and vocabulary need context_dim > 0 (a cross-attention "
             "model)");
    return;
  }
  DF_CHECK(context_dim > 0 && context_dim <= kMaxContextDim, "UNetConfig: context_dim must be in [0, ", kMaxContextDim,
           "], got ", context_dim);
  DF_CHECK(context_tokens >= 1 && context_tokens <= kMaxTokens, "UNetConfig: context_tokens must be in [1, ",
           kMaxTokens, "], got ", context_tokens);
  DF_CHECK(num_classes > 0 && class_names.size() == static_cast<size_t>(num_classes), "UNetConfig: a cross-attention "
           "model (context_dim ", context_dim, ") needs one class name per class: num_classes ", num_classes, ", ",
           class_names.size(), " class_names");
  DF_CHECK(!vocabulary.empty() && static_cast<int64_t>(vocabulary.size()) <= kMaxWords, "UNetConfig: vocabulary must "
           "hold 1 to ", kMaxWords, " words, got ", vocabulary.size());
  std::set<std::string> seen;
  for (const std::string& w : vocabulary) {
    const std::vector<std::string> split = prompt_words(w);
    DF_CHECK(split.size() == 1 && split[0] == w, "UNetConfig: vocabulary word '", w, "' is not one lower-case word");
    DF_CHECK(seen.insert(w).second, "UNetConfig: vocabulary word '", w, "' appears twice");
  }
  // Each class name must tokenise: its words known and at most context_tokens of them.
  for (const std::string& name : class_names) {
    const std::vector<std::string> words = prompt_words(name);
    DF_CHECK(!words.empty(), "UNetConfig: class name '", name, "' has no words");
    DF_CHECK(static_cast<int64_t>(words.size()) <= context_tokens, "UNetConfig: class name '", name, "' has ",
             words.size(), " words, more than context_tokens ", context_tokens);
    for (const std::string& w : words)
      DF_CHECK(seen.count(w), "UNetConfig: class name '", name, "': the word '", w, "' is not in the vocabulary");
  }
  int s = image_size;
  std::set<int> sizes;
  for (size_t i = 0; i < channel_mult.size(); ++i, s /= 2) sizes.insert(s);
  for (int r : context_resolutions)
    DF_CHECK(sizes.count(r), "UNetConfig: context_resolutions holds ", r, ", not a feature-map size of this model");
}

std::vector<std::string> prompt_words(std::string_view text) {
  std::vector<std::string> words;
  std::string w;
  for (char ch : text) {
    const unsigned char u = static_cast<unsigned char>(ch);
    if (std::isspace(u) || ch == '/') {
      if (!w.empty()) words.push_back(std::move(w));
      w.clear();
    } else {
      w += static_cast<char>(u < 128 ? std::tolower(u) : u);
    }
  }
  if (!w.empty()) words.push_back(std::move(w));
  return words;
}

std::vector<std::string> context_vocabulary(const std::vector<std::string>& class_names) {
  std::vector<std::string> vocab;
  std::set<std::string> seen;
  for (const std::string& name : class_names)
    for (std::string& w : prompt_words(name))
      if (seen.insert(w).second) vocab.push_back(std::move(w));
  return vocab;
}

std::vector<int64_t> UNetConfig::tokenize(std::string_view prompt) const {
  DF_CHECK(has_context(), "this model has no cross-attention (context_dim 0): it takes no prompt");
  const std::vector<std::string> words = prompt_words(prompt);
  auto known = [&] {
    std::string all;
    for (const std::string& w : vocabulary) all += (all.empty() ? "" : ", ") + w;
    return all;
  };
  DF_CHECK(static_cast<int64_t>(words.size()) <= context_tokens, "prompt '", prompt, "' has ", words.size(),
           " words; the model reads at most ", context_tokens);
  std::vector<int64_t> ids(static_cast<size_t>(context_tokens), 0);
  for (size_t i = 0; i < words.size(); ++i) {
    const auto it = std::find(vocabulary.begin(), vocabulary.end(), words[i]);
    DF_CHECK(it != vocabulary.end(), "prompt '", prompt, "': the model does not know the word '", words[i],
             "' (known: ", known(), ")");
    ids[i] = (it - vocabulary.begin()) + 1;
  }
  return ids;
}

nlohmann::json UNetConfig::to_json() const {
  nlohmann::json j{{"in_channels", in_channels},
                   {"out_channels", out_channels},
                   {"image_size", image_size},
                   {"base_channels", base_channels},
                   {"channel_mult", channel_mult},
                   {"num_res_blocks", num_res_blocks},
                   {"attention_resolutions", attention_resolutions},
                   {"num_heads", num_heads},
                   {"head_channels", head_channels},
                   {"dropout", dropout},
                   {"groups", groups},
                   {"num_classes", num_classes},
                   {"scale_shift_norm", scale_shift_norm},
                   {"resblock_updown", resblock_updown},
                   {"rescale_residual", rescale_residual},
                   {"learn_sigma", learn_sigma},
                   {"conv_resample", conv_resample},
                   {"init", enum_name(init)},
                   {"time_embedding", enum_name(time_embedding)}};
  // Written only when they differ from the defaults, so that a default model's config (every
  // checkpoint made before these keys existed) reads and writes exactly as before, and older
  // builds can still read it.
  if (norm_eps != UNetConfig{}.norm_eps) j["norm_eps"] = norm_eps;
  if (downsample_padding != UNetConfig{}.downsample_padding) j["downsample_padding"] = downsample_padding;
  if (low_res_channels != 0) j["low_res_channels"] = low_res_channels;
  if (low_res_size != 0) j["low_res_size"] = low_res_size;
  if (has_context()) {
    j["context_dim"] = context_dim;
    j["context_resolutions"] = context_resolutions;
    j["context_tokens"] = context_tokens;
    j["class_names"] = class_names;
    j["vocabulary"] = vocabulary;
  }
  return j;
}

UNetConfig UNetConfig::from_json(const nlohmann::json& j) {
  DF_CHECK(j.is_object(), "UNetConfig: expected a JSON object, got ", json_brief(j));
  UNetConfig c;
  const std::set<std::string> keys = {"in_channels",     "out_channels",      "image_size",
                                      "base_channels",   "channel_mult",      "num_res_blocks",
                                      "attention_resolutions", "num_heads",   "head_channels",
                                      "dropout",         "groups",            "num_classes",
                                      "scale_shift_norm", "resblock_updown",  "rescale_residual",
                                      "learn_sigma",     "conv_resample",     "init",
                                      "time_embedding",  "norm_eps",          "downsample_padding",
                                      "low_res_channels", "low_res_size",
                                      "context_dim",     "context_resolutions", "context_tokens",
                                      "class_names",     "vocabulary"};
  for (auto it = j.begin(); it != j.end(); ++it)
    DF_CHECK(keys.count(it.key()), "UNetConfig: unknown key '", it.key(), "'");
  // json_to, not get_to: nlohmann's conversions are unchecked casts (core/json_util.h).
  auto get = [&](const char* k, auto& dst) {
    if (j.contains(k) && !json_to(j.at(k), dst))
      DF_FAIL("UNetConfig: bad value for '", k, "': ", json_brief(j.at(k)), " (the wrong type, or out of range)");
  };
  // An enumeration's name, through its one parser (core/enum_names.h).
  auto get_enum = [&]<class E>(const char* k, E& dst) {
    std::string name;
    get(k, name);
    if (j.contains(k)) dst = parse_enum<E>(name, k, "UNetConfig");
  };
  get("in_channels", c.in_channels);
  get("out_channels", c.out_channels);
  get("image_size", c.image_size);
  get("base_channels", c.base_channels);
  get("channel_mult", c.channel_mult);
  get("num_res_blocks", c.num_res_blocks);
  get("attention_resolutions", c.attention_resolutions);
  get("num_heads", c.num_heads);
  get("head_channels", c.head_channels);
  get("dropout", c.dropout);
  get("groups", c.groups);
  get("norm_eps", c.norm_eps);
  get("downsample_padding", c.downsample_padding);
  get("num_classes", c.num_classes);
  get("low_res_channels", c.low_res_channels);
  get("low_res_size", c.low_res_size);
  get("scale_shift_norm", c.scale_shift_norm);
  get("resblock_updown", c.resblock_updown);
  get("rescale_residual", c.rescale_residual);
  get("learn_sigma", c.learn_sigma);
  get("conv_resample", c.conv_resample);
  get_enum("init", c.init);
  get_enum("time_embedding", c.time_embedding);
  get("context_dim", c.context_dim);
  get("context_resolutions", c.context_resolutions);
  get("context_tokens", c.context_tokens);
  get("class_names", c.class_names);
  get("vocabulary", c.vocabulary);
  // A config written by hand may leave the vocabulary out: the class names' words.
  if (c.context_dim > 0 && !j.contains("vocabulary")) c.vocabulary = context_vocabulary(c.class_names);
  c.validate();
  return c;
}

std::vector<std::string> UNetConfig::preset_names() {
  return {"ddpm-cifar10", "fmnist", "tiny", "imagenet64", "latent"};
}

UNetConfig UNetConfig::preset(const std::string& name) {
  UNetConfig c;
  if (name == "ddpm-cifar10") {
    // Ho et al. 2020, appendix B: 35.7M parameters, TF variance-scaling init.
    c.in_channels = c.out_channels = 3;
    c.image_size = 32;
    c.base_channels = 128;
    c.channel_mult = {1, 2, 2, 2};
    c.num_res_blocks = 2;
    c.attention_resolutions = {16};
    c.num_heads = 1;
    c.dropout = 0.1f;
    c.groups = 32;
    c.init = InitScheme::ddpm;
    c.time_embedding = TimeEmbeddingKind::ddpm;
  } else if (name == "fmnist") {
    // 28 -> 14 -> 7; ADM-style blocks, sized for a GPU.
    c.in_channels = c.out_channels = 1;
    c.image_size = 28;
    c.base_channels = 64;
    c.channel_mult = {1, 2, 2};
    c.num_res_blocks = 2;
    c.attention_resolutions = {14, 7};
    c.head_channels = 32;
    c.dropout = 0.1f;
    c.groups = 32;
    c.scale_shift_norm = true;
  } else if (name == "tiny") {
    // The CPU model: one block per level, attention only on the 7x7 map (49 tokens), 16/32/32
    // channels with 8 groups. 28 -> 14 -> 7 needs no padding. Most of the cost is at 28x28, so
    // the width there sets the price: 16 channels make a batch-64 step ~2.7x cheaper than 32
    // (docs/models.md has the timings); the 32-wide variant is base_channels 32.
    c.in_channels = c.out_channels = 1;
    c.image_size = 28;
    c.base_channels = 16;
    c.channel_mult = {1, 2, 2};
    c.num_res_blocks = 1;
    c.attention_resolutions = {7};
    c.num_heads = 1;
    c.dropout = 0.f;
    c.groups = 8;
  } else if (name == "imagenet64") {
    // Improved DDPM (Nichol & Dhariwal 2021) ImageNet 64x64: learned sigma, scale-shift norm,
    // 4 heads at 16 and 8.
    c.in_channels = c.out_channels = 3;
    c.image_size = 64;
    c.base_channels = 128;
    c.channel_mult = {1, 2, 3, 4};
    c.num_res_blocks = 3;
    c.attention_resolutions = {16, 8};
    c.num_heads = 4;
    c.dropout = 0.f;
    c.groups = 32;
    c.scale_shift_norm = true;
    c.learn_sigma = true;
  } else if (name == "latent") {
    // The CPU model of latent diffusion on 7x7x4 latents (train-autoencoder's default, f = 4 on
    // 28x28): 7 is odd, so one level without downsampling, its width spent on two blocks per level
    // and attention over the 49 positions. image_size and the channels follow the latents.
    c.in_channels = c.out_channels = 4;
    c.image_size = 7;
    c.base_channels = 64;
    c.channel_mult = {1};
    c.num_res_blocks = 2;
    c.attention_resolutions = {7};
    c.head_channels = 32;
    c.dropout = 0.f;
    c.groups = 16;
    c.scale_shift_norm = true;
  } else {
    std::string all;
    for (auto& n : preset_names()) all += (all.empty() ? "" : ", ") + n;
    DF_FAIL("unknown UNet preset '", name, "' (known: ", all, ")");
  }
  c.validate();
  return c;
}

// ---- the blocks of the tree ---------------------------------------------------------------------

namespace {

ResBlockOptions res_options(const UNetConfig& c, int64_t in, int64_t out) {
  ResBlockOptions o;
  o.in_channels = in;
  o.out_channels = out;
  o.emb_channels = c.emb_channels();
  o.groups = c.groups;
  o.norm_eps = static_cast<float>(c.norm_eps);
  o.dropout = c.dropout;
  o.scale_shift_norm = c.scale_shift_norm;
  o.rescale = c.rescale_residual;
  return o;
}

bool has_attention(const UNetConfig& c, int size) {
  return std::find(c.attention_resolutions.begin(), c.attention_resolutions.end(), size) !=
         c.attention_resolutions.end();
}

bool has_context_attention(const UNetConfig& c, int size) {
  return c.has_context() && std::find(c.context_resolutions.begin(), c.context_resolutions.end(), size) !=
                                c.context_resolutions.end();
}

std::shared_ptr<AttentionBlock> make_attention(const UNetConfig& c, int64_t ch) {
  return std::make_shared<AttentionBlock>(ch, c.groups, c.head_channels > 0 ? -1 : c.num_heads, c.head_channels,
                                          static_cast<float>(c.norm_eps));
}

// The same heads as the AttentionBlock would have at this width.
std::shared_ptr<SpatialTransformer> make_transformer(const UNetConfig& c, int64_t ch) {
  const int heads = c.head_channels > 0 ? static_cast<int>(ch / c.head_channels) : c.num_heads;
  return std::make_shared<SpatialTransformer>(ch, c.context_dim, c.groups, heads, static_cast<float>(c.norm_eps));
}

// Sequential site numbers for dropout streams.
struct Sites {
  DropoutKey key;
  uint64_t next = 0;
  DropoutKey operator()() { return key.sub(next++); }
};

}  // namespace

// The attention after the j-th ResBlock of a level: self-attention (attn.<j>), a
// SpatialTransformer attending to the context (xattn.<j>), or none.
struct LevelAttention {
  std::shared_ptr<ModuleList<AttentionBlock>> attn;
  std::shared_ptr<ModuleList<SpatialTransformer>> xattn;

  void build(Module& lvl, const UNetConfig& c, int size) {
    if (has_context_attention(c, size))
      xattn = lvl.register_module("xattn", std::make_shared<ModuleList<SpatialTransformer>>());
    else if (has_attention(c, size))
      attn = lvl.register_module("attn", std::make_shared<ModuleList<AttentionBlock>>());
  }
  void push(const UNetConfig& c, int64_t ch) {
    if (attn) attn->push_back(make_attention(c, ch));
    if (xattn) xattn->push_back(make_transformer(c, ch));
  }
  ag::Var forward(size_t j, const ag::Var& h, const ag::Var& ctx) const {
    if (attn) return (*attn)[j].forward(h);
    if (xattn) return (*xattn)[j].forward(h, ctx);
    return h;
  }
};

// One resolution of the encoder: res.<j>, attn.<j> (or xattn.<j>), downsample.
class UNetDownLevel : public Module {
 public:
  std::shared_ptr<ModuleList<ResBlock>> res;
  LevelAttention attn;
  std::shared_ptr<Downsample> down;
  std::shared_ptr<ResBlock> down_res;  // resblock_updown
};

class UNetUpLevel : public Module {
 public:
  std::shared_ptr<ModuleList<ResBlock>> res;
  LevelAttention attn;
  std::shared_ptr<Upsample> up;
  std::shared_ptr<ResBlock> up_res;
};

class UNetMid : public Module {
 public:
  std::shared_ptr<ResBlock> res1, res2;
  std::shared_ptr<AttentionBlock> attn;     // or, in a cross-attention model,
  std::shared_ptr<SpatialTransformer> xattn;
};

// The context of a cross-attention model: token ids (B, L) -> tokens(ids) + positions, (B, L, D).
// Token 0 is the pad; a context of pads only is the null context of classifier-free guidance.
class ContextEncoder : public Module {
 public:
  ContextEncoder(int64_t words, int64_t length, int64_t dim) : length_(length), dim_(dim) {
    tokens_ = register_module("tokens", std::make_shared<Embedding>(words + 1, dim));
    positions_ = &register_parameter("positions", Tensor::zeros({length, dim}), Init::normal(1.f));
  }
  ag::Var forward(const Tensor& ids) const {
    const int64_t B = ids.size(0);
    ag::Var e = ag::reshape(tokens_->forward(ids.reshape({B * length_})), {B, length_, dim_});
    return ag::add(e, *positions_);
  }

 private:
  int64_t length_, dim_;
  std::shared_ptr<Embedding> tokens_;
  ag::Var* positions_ = nullptr;
};

namespace {

// Builds conv_in, down.* and mid.* into `m`; returns the channels of each skip (in push order)
// and sets ch to the channel count leaving the middle block.
std::vector<int64_t> build_encoder(Module& m, const UNetConfig& c, std::shared_ptr<Conv2d>& conv_in,
                                   std::shared_ptr<ModuleList<UNetDownLevel>>& down, std::shared_ptr<UNetMid>& mid,
                                   int64_t& ch) {
  ch = int64_t{c.channel_mult[0]} * c.base_channels;
  // A super-resolution model's upsampled low-resolution image enters beside x (SR3's concatenation).
  conv_in = m.register_module("conv_in", std::make_shared<Conv2d>(c.in_channels + c.low_res_channels, ch, 3));
  std::vector<int64_t> skips = {ch};
  down = m.register_module("down", std::make_shared<ModuleList<UNetDownLevel>>());
  int size = c.image_size;
  const size_t L = c.channel_mult.size();
  for (size_t i = 0; i < L; ++i) {
    auto lvl = down->push_back(std::make_shared<UNetDownLevel>());
    lvl->res = lvl->register_module("res", std::make_shared<ModuleList<ResBlock>>());
    lvl->attn.build(*lvl, c, size);
    const int64_t out = int64_t{c.channel_mult[i]} * c.base_channels;
    for (int j = 0; j < c.num_res_blocks; ++j) {
      lvl->res->push_back(std::make_shared<ResBlock>(res_options(c, ch, out)));
      ch = out;
      lvl->attn.push(c, ch);
      skips.push_back(ch);
    }
    if (i + 1 < L) {
      if (c.resblock_updown) {
        auto o = res_options(c, ch, ch);
        o.resample = ResBlockOptions::Resample::down;
        lvl->down_res = lvl->register_module("downsample", std::make_shared<ResBlock>(o));
      } else {
        lvl->down = lvl->register_module("downsample", std::make_shared<Downsample>(ch, c.conv_resample, c.downsample_padding));
      }
      skips.push_back(ch);
      size /= 2;
    }
  }
  mid = m.register_module("mid", std::make_shared<UNetMid>());
  mid->res1 = mid->register_module("res1", std::make_shared<ResBlock>(res_options(c, ch, ch)));
  if (c.has_context())
    mid->xattn = mid->register_module("xattn", make_transformer(c, ch));
  else
    mid->attn = mid->register_module("attn", make_attention(c, ch));
  mid->res2 = mid->register_module("res2", std::make_shared<ResBlock>(res_options(c, ch, ch)));
  return skips;
}

ag::Var run_encoder(const ag::Var& x, const ag::Var& emb_act, const ag::Var& ctx, Sites& sites, const Conv2d& conv_in,
                    const ModuleList<UNetDownLevel>& down, const UNetMid& mid, std::vector<ag::Var>* skips) {
  ag::Var h = conv_in.forward(x);
  if (skips) skips->push_back(h);
  for (const auto& lvl : down) {
    for (size_t j = 0; j < lvl->res->size(); ++j) {
      h = (*lvl->res)[j].forward(h, emb_act, sites());
      h = lvl->attn.forward(j, h, ctx);
      if (skips) skips->push_back(h);
    }
    if (lvl->down_res || lvl->down) {
      h = lvl->down_res ? lvl->down_res->forward(h, emb_act, sites()) : lvl->down->forward(h);
      if (skips) skips->push_back(h);
    }
  }
  h = mid.res1->forward(h, emb_act, sites());
  h = mid.xattn ? mid.xattn->forward(h, ctx) : mid.attn->forward(h);
  return mid.res2->forward(h, emb_act, sites());
}

void build_time_embedding(Module& m, const UNetConfig& c, std::shared_ptr<Linear>& fc1, std::shared_ptr<Linear>& fc2,
                          const char* name = "time") {
  auto time = m.register_module(name, std::make_shared<Module>());
  fc1 = time->register_module("fc1", std::make_shared<Linear>(c.base_channels, c.emb_channels()));
  fc2 = time->register_module("fc2", std::make_shared<Linear>(c.emb_channels(), c.emb_channels()));
}

ag::Var time_embedding(const Tensor& t, const UNetConfig& c, const Linear& fc1, const Linear& fc2, DType dtype,
                       const char* what = "t") {
  DF_CHECK(t.defined() && t.dim() == 1, "UNet: ", what, " must be a (B) tensor, got ",
           t.defined() ? t.shape().str() : "undefined");
  Tensor tf = t.dtype() == DType::f32 ? t : t.to(DType::f32);
  kernels::TimeEmbeddingOptions opt;
  opt.flip_sin_to_cos = c.time_embedding == TimeEmbeddingKind::adm;
  opt.downscale_freq_shift = c.time_embedding == TimeEmbeddingKind::adm ? 0.f : 1.f;
  Tensor e = kernels::timestep_embedding(tf, c.base_channels, opt);
  if (e.dtype() != dtype) e = e.to(dtype);
  return fc2.forward(ag::silu(fc1.forward(ag::Var(e))));
}

void check_input(const ag::Var& x, const UNetConfig& c, const char* who) {
  DF_CHECK(x.dim() == 4 && x.size(1) == c.image_size && x.size(2) == c.image_size && x.size(3) == c.in_channels, who,
           ": expected input (B, ", c.image_size, ", ", c.image_size, ", ", c.in_channels, "), got ",
           x.shape().str());
}

}  // namespace

// ---- super-resolution resampling ---------------------------------------------------------------

ag::Var nearest_upsample(const ag::Var& x, int factor) {
  DF_CHECK(factor >= 1 && (factor & (factor - 1)) == 0, "nearest_upsample: factor ", factor, " is not a power of two");
  ag::Var y = x;
  for (int f = factor; f > 1; f /= 2) y = ag::upsample_nearest2x(y);
  return y;
}

Tensor area_downsample(const Tensor& x, int factor) {
  DF_CHECK(factor >= 1 && (factor & (factor - 1)) == 0, "area_downsample: factor ", factor, " is not a power of two");
  DF_CHECK(x.dim() == 4 && x.size(1) % factor == 0 && x.size(2) % factor == 0, "area_downsample: (B, H, W, C) with H "
           "and W divisible by ", factor, " expected, got ", x.shape().str());
  ag::NoGrad ng;
  // The mean of 2x2 means of equal blocks is the mean of the block: area averaging by `factor`.
  ag::Var y(x);
  for (int f = factor; f > 1; f /= 2) y = ag::avg_pool2x(y);
  return y.value();
}

// ---- UNet ---------------------------------------------------------------------------------------

Tensor UNet::context_ids(const Tensor& labels, int64_t B) const {
  const UNetConfig& c = cfg_;
  const int64_t L = c.context_tokens, V = static_cast<int64_t>(c.vocabulary.size());
  std::vector<int64_t> ids(static_cast<size_t>(B * L), 0);  // undefined labels: the null context
  if (labels.defined() && labels.dim() == 2) {
    DF_CHECK(labels.dtype() == DType::i64 && labels.size(0) == B && labels.size(1) == L, "UNet: token ids must be i64 (",
             B, ", ", L, "), got ", labels.str());
    ids = labels.to(Device::cpu()).to_vector_i64();
    for (int64_t id : ids) DF_CHECK(id >= 0 && id <= V, "UNet: token id ", id, " outside [0, ", V, "]");
  } else if (labels.defined()) {
    DF_CHECK(labels.dtype() == DType::i64 && labels.numel() == B, "UNet: labels must be i64 (", B, ") or token ids (",
             B, ", ", L, "), got ", labels.str());
    const std::vector<int64_t> l = labels.to(Device::cpu()).to_vector_i64();
    for (int64_t b = 0; b < B; ++b) {
      DF_CHECK(l[b] >= 0 && l[b] <= c.num_classes, "UNet: label ", l[b], " outside [0, ", c.num_classes, "]");
      if (l[b] == c.num_classes) continue;  // the null label: the null context
      const std::vector<int64_t> t = c.tokenize(c.class_names[static_cast<size_t>(l[b])]);
      std::copy(t.begin(), t.end(), ids.begin() + b * L);
    }
  }
  return Tensor::from_vector_i64(ids, {B, L});
}

Tensor UNet::label_ids(const Tensor& labels, int64_t B) const {
  const UNetConfig& c = cfg_;
  if (context_) return context_ids(labels, B);
  if (!label_emb_) {
    DF_CHECK(!labels.defined(), "UNet: labels given to an unconditional model (num_classes = 0)");
    return {};
  }
  if (!labels.defined())
    return Tensor::from_vector_i64(std::vector<int64_t>(static_cast<size_t>(B), c.num_classes), {B});
  DF_CHECK(labels.dtype() == DType::i64 && labels.numel() == B, "UNet: labels must be i64 (", B, "), got ",
           labels.str());
  const std::vector<int64_t> l = labels.to(Device::cpu()).to_vector_i64();
  for (int64_t id : l)
    DF_CHECK(id >= 0 && id <= c.num_classes, "UNet: label ", id, " outside [0, ", c.num_classes, "]");
  return Tensor::from_vector_i64(l, {B});
}

UNet::UNet(const UNetConfig& cfg, uint64_t seed) : UNet(cfg, seed, true) {}

UNet::UNet(const UNetConfig& cfg, Undrawn) : UNet(cfg, 0, false) {}

UNet::UNet(const UNetConfig& cfg, uint64_t seed, bool draw) : cfg_(cfg) {
  cfg_.validate();
  const UNetConfig& c = cfg_;
  build_time_embedding(*this, c, time_fc1_, time_fc2_);
  if (c.has_context())
    context_ = register_module("context", std::make_shared<ContextEncoder>(static_cast<int64_t>(c.vocabulary.size()),
                                                                           c.context_tokens, c.context_dim));
  else if (c.num_classes > 0)
    label_emb_ = register_module("label_emb", std::make_shared<Embedding>(c.num_classes + 1, c.emb_channels()));
  // CDM conditions on the augmentation level as on t: its own sinusoidal features and MLP, added.
  if (c.super_res()) build_time_embedding(*this, c, aug_fc1_, aug_fc2_, "aug");
  int64_t ch = 0;
  std::vector<int64_t> skips = build_encoder(*this, c, conv_in_, down_, mid_, ch);

  up_ = register_module("up", std::make_shared<ModuleList<UNetUpLevel>>());
  const size_t L = c.channel_mult.size();
  int size = c.image_size >> (L - 1);
  // up.<i> works at the resolution of down.<i>: built coarsest first (the order the skips pop),
  // registered in level order.
  std::vector<std::shared_ptr<UNetUpLevel>> levels(L);
  for (size_t k = 0; k < L; ++k) {
    const size_t i = L - 1 - k;
    auto lvl = levels[i] = std::make_shared<UNetUpLevel>();
    lvl->res = lvl->register_module("res", std::make_shared<ModuleList<ResBlock>>());
    lvl->attn.build(*lvl, c, size);
    const int64_t out = int64_t{c.channel_mult[i]} * c.base_channels;
    for (int j = 0; j <= c.num_res_blocks; ++j) {
      const int64_t skip_ch = skips.back();
      skips.pop_back();
      lvl->res->push_back(std::make_shared<ResBlock>(res_options(c, ch + skip_ch, out)));
      ch = out;
      lvl->attn.push(c, ch);
    }
    if (i > 0) {
      if (c.resblock_updown) {
        auto o = res_options(c, ch, ch);
        o.resample = ResBlockOptions::Resample::up;
        lvl->up_res = lvl->register_module("upsample", std::make_shared<ResBlock>(o));
      } else {
        lvl->up = lvl->register_module("upsample", std::make_shared<Upsample>(ch, c.conv_resample));
      }
      size *= 2;
    }
  }
  for (auto& lvl : levels) up_->push_back(lvl);
  DF_CHECK(skips.empty(), "UNet: internal skip bookkeeping");
  out_norm_ = register_module("out_norm", std::make_shared<GroupNorm>(c.groups, ch, static_cast<float>(c.norm_eps)));
  out_conv_ = register_module("out_conv", std::make_shared<Conv2d>(ch, c.output_channels(), 3, 1, /*zero_init=*/true));
  if (draw) init_parameters(seed, c.init);
}

ag::Var UNet::forward(const ag::Var& x, const Tensor& t, const Tensor& labels, const LowRes& low) {
  const UNetConfig& c = cfg_;
  check_input(x, c, "UNet");
  const int64_t B = x.size(0);
  DF_CHECK(t.defined() && t.numel() == B, "UNet: t must have one timestep per sample (", B, ")");
  ag::Var emb = time_embedding(t, c, *time_fc1_, *time_fc2_, x.dtype());
  ag::Var input = x;
  if (c.super_res()) {
    DF_CHECK(low.defined(), "UNet: a super-resolution model (", c.low_res_size, "x", c.low_res_size, " -> ",
             c.image_size, "x", c.image_size, ") needs its low-resolution image");
    const ag::Var& z = low.image;
    DF_CHECK(z.dim() == 4 && z.size(0) == B && z.size(1) == c.low_res_size && z.size(2) == c.low_res_size &&
                 z.size(3) == c.low_res_channels,
             "UNet: expected a low-resolution image (", B, ", ", c.low_res_size, ", ", c.low_res_size, ", ",
             c.low_res_channels, "), got ", z.shape().str());
    DF_CHECK(low.level.defined() && low.level.numel() == B, "UNet: the low-resolution image needs one augmentation "
             "level per sample (", B, ")");
    emb = ag::add(emb, time_embedding(low.level, c, *aug_fc1_, *aug_fc2_, x.dtype(), "the augmentation level"));
    ag::Var up = nearest_upsample(z.dtype() == x.dtype() ? z : ag::Var(z.value().to(x.dtype())), c.low_res_factor());
    input = ag::concat_last({x, up});
  } else {
    DF_CHECK(!low.defined(), "UNet: a low-resolution image given to a model without super-resolution input "
             "(low_res_channels = 0)");
  }
  Tensor ids;  // label_ids()'s, on x's device
  if (labels.defined() && labels.device().is_cuda()) {
    // Checked by the caller: a read here would wait for the GPU, which a captured step cannot.
    DF_CHECK(context_ || label_emb_, "UNet: labels given to an unconditional model (num_classes = 0)");
    const Shape want = context_ ? Shape{B, c.context_tokens} : Shape{B};
    DF_CHECK(labels.dtype() == DType::i64 && labels.shape() == want && labels.device() == x.device(),
             "UNet: labels on a GPU must be label_ids()'s i64 ", want.str(), " on the input's device, got ",
             labels.str());
    ids = labels;
  } else {
    ids = label_ids(labels, B);
    if (ids.defined()) ids = ids.to(x.device());
  }
  ag::Var ctx;
  if (context_)
    ctx = context_->forward(ids);
  else if (label_emb_)
    emb = ag::add(emb, label_emb_->forward(ids));
  // Every block's embedding projection starts with SiLU (ADM's emb_layers): do it once.
  ag::Var emb_act = ag::silu(emb);
  Sites sites{{dropout_seed_, calls_++}};

  std::vector<ag::Var> skips;
  ag::Var h = run_encoder(input, emb_act, ctx, sites, *conv_in_, *down_, *mid_, &skips);
  for (size_t k = up_->size(); k-- > 0;) {
    const UNetUpLevel* lvl = &(*up_)[k];
    for (size_t j = 0; j < lvl->res->size(); ++j) {
      h = ag::concat_last({h, skips.back()});
      skips.pop_back();
      h = (*lvl->res)[j].forward(h, emb_act, sites());
      h = lvl->attn.forward(j, h, ctx);
    }
    if (lvl->up_res) h = lvl->up_res->forward(h, emb_act, sites());
    if (lvl->up) h = lvl->up->forward(h);
  }
  return out_conv_->forward(out_norm_->forward(h, /*silu=*/true));
}

// ---- EncoderClassifier ---------------------------------------------------------------------------

EncoderClassifier::EncoderClassifier(const UNetConfig& cfg, int num_classes, uint64_t seed)
    : cfg_(cfg), num_classes_(num_classes) {
  cfg_.num_classes = 0;  // the classifier predicts labels; it is never conditioned on one
  cfg_.low_res_channels = cfg_.low_res_size = 0;  // nor on a low-resolution image
  cfg_.context_dim = 0;  // nor on a context: its encoder has plain attention blocks
  cfg_.context_resolutions.clear();
  cfg_.class_names.clear();
  cfg_.vocabulary.clear();
  cfg_.validate();
  DF_CHECK(num_classes > 0, "EncoderClassifier needs num_classes > 0");
  build_time_embedding(*this, cfg_, time_fc1_, time_fc2_);
  int64_t ch = 0;
  build_encoder(*this, cfg_, conv_in_, down_, mid_, ch);
  out_norm_ = register_module("out_norm", std::make_shared<GroupNorm>(cfg_.groups, ch, static_cast<float>(cfg_.norm_eps)));
  // Zero-initialised like ADM's pooled head: the classifier starts at uniform logits.
  head_ = register_module("head", std::make_shared<Linear>(ch, num_classes, true, /*zero_init=*/true));
  init_parameters(seed, cfg_.init);
}

ag::Var EncoderClassifier::features(const ag::Var& x, const Tensor& t) {
  check_input(x, cfg_, "EncoderClassifier");
  DF_CHECK(t.defined() && t.numel() == x.size(0), "EncoderClassifier: t must have one timestep per sample");
  ag::Var emb_act = ag::silu(time_embedding(t, cfg_, *time_fc1_, *time_fc2_, x.dtype()));
  Sites sites{{dropout_seed_, calls_++}};
  ag::Var h = run_encoder(x, emb_act, ag::Var(), sites, *conv_in_, *down_, *mid_, nullptr);
  h = out_norm_->forward(h, /*silu=*/true);
  return ag::mean(h, {1, 2});  // global average pool over H, W
}

ag::Var EncoderClassifier::forward(const ag::Var& x, const Tensor& t) { return head_->forward(features(x, t)); }

}  // namespace diffuse::nn
