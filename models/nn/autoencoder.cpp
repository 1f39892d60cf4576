#include "models/nn/autoencoder.h"

#include <limits>
#include <set>

#include "autograd/elementwise.h"
#include "autograd/linalg.h"
#include "core/check.h"
#include "core/json_util.h"

namespace diffuse::nn {

// ---- config -----------------------------------------------------------------------------------

void AutoencoderConfig::validate() const {
  // Bounds as UNetConfig's: a config read from a file may hold any int.
  constexpr int64_t kMaxChannels = 1 << 16, kMaxImageSize = 1 << 16, kMaxLevels = 16, kMaxResBlocks = 1 << 10;
  DF_CHECK(in_channels > 0 && in_channels <= kMaxChannels, "AutoencoderConfig: in_channels must be in [1, ",
           kMaxChannels, "], got ", in_channels);
  DF_CHECK(latent_channels > 0 && latent_channels <= kMaxChannels, "AutoencoderConfig: latent_channels must be in [1, ",
           kMaxChannels, "], got ", latent_channels);
  DF_CHECK(image_size > 0 && image_size <= kMaxImageSize, "AutoencoderConfig: image_size must be in [1, ",
           kMaxImageSize, "], got ", image_size);
  DF_CHECK(base_channels > 0 && base_channels <= kMaxChannels, "AutoencoderConfig: base_channels must be in [1, ",
           kMaxChannels, "], got ", base_channels);
  DF_CHECK(!channel_mult.empty() && static_cast<int64_t>(channel_mult.size()) <= kMaxLevels,
           "AutoencoderConfig: channel_mult must have 1 to ", kMaxLevels, " entries");
  for (int m : channel_mult)
    DF_CHECK(m > 0 && int64_t{m} * base_channels <= kMaxChannels, "AutoencoderConfig: channel_mult entries must be "
             "positive and base_channels x entry at most ", kMaxChannels);
  DF_CHECK(num_res_blocks >= 1 && num_res_blocks <= kMaxResBlocks, "AutoencoderConfig: num_res_blocks must be in [1, ",
           kMaxResBlocks, "]");
  DF_CHECK(groups > 0, "AutoencoderConfig: groups must be positive");
  for (int m : channel_mult)
    DF_CHECK((int64_t{m} * base_channels) % groups == 0, "AutoencoderConfig: ", int64_t{m} * base_channels,
             " channels not divisible by groups ", groups);
  DF_CHECK(norm_eps > 0 && norm_eps <= 1.0 && static_cast<float>(norm_eps) >= std::numeric_limits<float>::min(),
           "AutoencoderConfig: norm_eps must be in (0, 1], got ", norm_eps);
  // Each halving must be exact, or the decoder's doublings would not come back to image_size.
  int s = image_size;
  for (size_t i = 0; i + 1 < channel_mult.size(); ++i) {
    DF_CHECK(s % 2 == 0, "AutoencoderConfig: image_size ", image_size, " cannot be halved ", channel_mult.size() - 1,
             " times (size ", s, " at level ", i, "); use fewer channel_mult entries");
    s /= 2;
  }
}

nlohmann::json AutoencoderConfig::to_json() const {
  return {{"image_size", image_size},         {"in_channels", in_channels},   {"latent_channels", latent_channels},
          {"base_channels", base_channels},   {"channel_mult", channel_mult}, {"num_res_blocks", num_res_blocks},
          {"groups", groups},                 {"norm_eps", norm_eps}};
}

AutoencoderConfig AutoencoderConfig::from_json(const nlohmann::json& j) {
  DF_CHECK(j.is_object(), "AutoencoderConfig: expected a JSON object, got ", json_brief(j));
  const std::set<std::string> keys = {"image_size",     "in_channels", "latent_channels", "base_channels",
                                      "channel_mult",   "num_res_blocks", "groups",        "norm_eps"};
  for (auto it = j.begin(); it != j.end(); ++it)
    DF_CHECK(keys.count(it.key()), "AutoencoderConfig: unknown key '", it.key(), "'");
  AutoencoderConfig c;
  auto get = [&](const char* k, auto& dst) {
    if (j.contains(k) && !json_to(j.at(k), dst))
      DF_FAIL("AutoencoderConfig: bad value for '", k, "': ", json_brief(j.at(k)), " (the wrong type, or out of range)");
  };
  get("image_size", c.image_size);
  get("in_channels", c.in_channels);
  get("latent_channels", c.latent_channels);
  get("base_channels", c.base_channels);
  get("channel_mult", c.channel_mult);
  get("num_res_blocks", c.num_res_blocks);
  get("groups", c.groups);
  get("norm_eps", c.norm_eps);
  c.validate();
  return c;
}

// ---- the tree ---------------------------------------------------------------------------------

class AEEncoderLevel : public Module {
 public:
  std::shared_ptr<ModuleList<ResBlock>> res;
  std::shared_ptr<Downsample> down;
};

class AEDecoderLevel : public Module {
 public:
  std::shared_ptr<ModuleList<ResBlock>> res;
  std::shared_ptr<Upsample> up;
};

class AEMid : public Module {
 public:
  std::shared_ptr<ResBlock> res1, res2;
  std::shared_ptr<AttentionBlock> attn;
};

namespace {

// A ResBlock without time conditioning (emb_channels 0: no emb_proj, norm2 without a shift).
ResBlockOptions res_options(const AutoencoderConfig& c, int64_t in, int64_t out) {
  ResBlockOptions o;
  o.in_channels = in;
  o.out_channels = out;
  o.emb_channels = 0;
  o.groups = c.groups;
  o.norm_eps = static_cast<float>(c.norm_eps);
  return o;
}

std::shared_ptr<AEMid> make_mid(Module& parent, const AutoencoderConfig& c, int64_t ch) {
  auto mid = parent.register_module("mid", std::make_shared<AEMid>());
  mid->res1 = mid->register_module("res1", std::make_shared<ResBlock>(res_options(c, ch, ch)));
  mid->attn = mid->register_module("attn", std::make_shared<AttentionBlock>(ch, c.groups, 1, -1,
                                                                            static_cast<float>(c.norm_eps)));
  mid->res2 = mid->register_module("res2", std::make_shared<ResBlock>(res_options(c, ch, ch)));
  return mid;
}

ag::Var run_mid(const AEMid& mid, const ag::Var& x) {
  ag::Var h = mid.res1->forward(x, ag::Var(), DropoutKey{});
  h = mid.attn->forward(h);
  return mid.res2->forward(h, ag::Var(), DropoutKey{});
}

}  // namespace

Autoencoder::Autoencoder(const AutoencoderConfig& cfg, uint64_t seed) : Autoencoder(cfg, seed, true) {}

Autoencoder::Autoencoder(const AutoencoderConfig& cfg, Undrawn) : Autoencoder(cfg, 0, false) {}

Autoencoder::Autoencoder(const AutoencoderConfig& cfg, uint64_t seed, bool draw) : cfg_(cfg) {
  cfg_.validate();
  const AutoencoderConfig& c = cfg_;
  const size_t L = c.channel_mult.size();
  auto width = [&](size_t i) { return int64_t{c.channel_mult[i]} * c.base_channels; };

  encoder_ = register_module("encoder", std::make_shared<Module>());
  int64_t ch = width(0);
  enc_in_ = encoder_->register_module("conv_in", std::make_shared<Conv2d>(c.in_channels, ch, 3));
  down_ = encoder_->register_module("down", std::make_shared<ModuleList<AEEncoderLevel>>());
  for (size_t i = 0; i < L; ++i) {
    auto lvl = down_->push_back(std::make_shared<AEEncoderLevel>());
    lvl->res = lvl->register_module("res", std::make_shared<ModuleList<ResBlock>>());
    for (int j = 0; j < c.num_res_blocks; ++j) {
      lvl->res->push_back(std::make_shared<ResBlock>(res_options(c, ch, width(i))));
      ch = width(i);
    }
    if (i + 1 < L) lvl->down = lvl->register_module("downsample", std::make_shared<Downsample>(ch, true));
  }
  enc_mid_ = make_mid(*encoder_, c, ch);
  enc_norm_ = encoder_->register_module("norm_out", std::make_shared<GroupNorm>(c.groups, ch, static_cast<float>(c.norm_eps)));
  enc_out_ = encoder_->register_module("conv_out", std::make_shared<Conv2d>(ch, 2 * c.latent_channels, 3));

  decoder_ = register_module("decoder", std::make_shared<Module>());
  ch = width(L - 1);
  dec_in_ = decoder_->register_module("conv_in", std::make_shared<Conv2d>(c.latent_channels, ch, 3));
  dec_mid_ = make_mid(*decoder_, c, ch);
  // up.<i> works at the resolution of down.<i>: built coarsest first, registered in level order.
  std::vector<std::shared_ptr<AEDecoderLevel>> levels(L);
  for (size_t k = 0; k < L; ++k) {
    const size_t i = L - 1 - k;
    auto lvl = levels[i] = std::make_shared<AEDecoderLevel>();
    lvl->res = lvl->register_module("res", std::make_shared<ModuleList<ResBlock>>());
    for (int j = 0; j <= c.num_res_blocks; ++j) {
      lvl->res->push_back(std::make_shared<ResBlock>(res_options(c, ch, width(i))));
      ch = width(i);
    }
    if (i > 0) lvl->up = lvl->register_module("upsample", std::make_shared<Upsample>(ch, true));
  }
  up_ = decoder_->register_module("up", std::make_shared<ModuleList<AEDecoderLevel>>());
  for (auto& lvl : levels) up_->push_back(lvl);
  dec_norm_ = decoder_->register_module("norm_out", std::make_shared<GroupNorm>(c.groups, ch, static_cast<float>(c.norm_eps)));
  dec_out_ = decoder_->register_module("conv_out", std::make_shared<Conv2d>(ch, c.in_channels, 3));
  if (draw) init_parameters(seed);
}

std::pair<ag::Var, ag::Var> Autoencoder::encode(const ag::Var& x) {
  const AutoencoderConfig& c = cfg_;
  DF_CHECK(x.dim() == 4 && x.size(1) == c.image_size && x.size(2) == c.image_size && x.size(3) == c.in_channels,
           "Autoencoder: expected images (B, ", c.image_size, ", ", c.image_size, ", ", c.in_channels, "), got ",
           x.shape().str());
  ag::Var h = enc_in_->forward(x);
  for (const auto& lvl : *down_) {
    for (const auto& r : *lvl->res) h = r->forward(h, ag::Var(), DropoutKey{});
    if (lvl->down) h = lvl->down->forward(h);
  }
  h = run_mid(*enc_mid_, h);
  h = enc_out_->forward(enc_norm_->forward(h, /*silu=*/true));
  const int64_t Z = c.latent_channels;
  return {ag::slice_last(h, 0, Z), ag::slice_last(h, Z, 2 * Z)};
}

ag::Var Autoencoder::decode(const ag::Var& z) {
  const AutoencoderConfig& c = cfg_;
  const int64_t s = c.latent_size();
  DF_CHECK(z.dim() == 4 && z.size(1) == s && z.size(2) == s && z.size(3) == c.latent_channels,
           "Autoencoder: expected latents (B, ", s, ", ", s, ", ", c.latent_channels, "), got ", z.shape().str());
  ag::Var h = run_mid(*dec_mid_, dec_in_->forward(z));
  for (size_t k = up_->size(); k-- > 0;) {
    const AEDecoderLevel& lvl = (*up_)[k];
    for (const auto& r : *lvl.res) h = r->forward(h, ag::Var(), DropoutKey{});
    if (lvl.up) h = lvl.up->forward(h);
  }
  return dec_out_->forward(dec_norm_->forward(h, /*silu=*/true));
}

ag::Var gaussian_kl(const ag::Var& mean, const ag::Var& logvar) {
  DF_CHECK(mean.shape() == logvar.shape() && mean.dim() >= 1, "gaussian_kl: mean ", mean.shape().str(),
           " and logvar ", logvar.shape().str(), " must have the same shape");
  // 0.5 (mu^2 + sigma^2 - 1 - log sigma^2), summed over every non-batch element.
  ag::Var terms = ag::sub(ag::add(ag::square(mean), ag::exp(logvar)), ag::add_scalar(logvar, 1.0));
  std::vector<int> axes;
  for (int d = 1; d < mean.dim(); ++d) axes.push_back(d);
  ag::Var per_sample = axes.empty() ? terms : ag::sum(terms, axes);
  return ag::mul_scalar(per_sample, 0.5);
}

}  // namespace diffuse::nn
