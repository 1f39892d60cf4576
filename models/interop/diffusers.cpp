#include "models/interop/diffusers.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <set>
#include <sstream>

#include "core/allocator.h"
#include "core/check.h"
#include "core/file_io.h"
#include "core/json_util.h"
#include "core/safetensors.h"
#include "models/train/super_res.h"

namespace diffuse::interop {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The diffusers release whose UNet2DModel this file maps (what exported configs say they are).
constexpr const char* kDiffusersVersion = "0.27.2";
// A diffuse checkpoint's metadata key holding the scheduler config a model was imported with, so
// an export writes back the scheduler's own sampling settings.
constexpr const char* kSchedulerMeta = "diffusers_scheduler";

json read_json_file(const fs::path& p) {
  std::ifstream in(p);
  DF_CHECK(in, "cannot read ", p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    json j = json::parse(ss.str());
    DF_CHECK(j.is_object(), p.string(), ": expected a JSON object");
    return j;
  } catch (const json::exception& e) {
    DF_FAIL(p.string(), ": not valid JSON (", e.what(), ")");
  }
}

// ---- config.json ----------------------------------------------------------------------------

// UNet2DModel's constructor defaults (diffusers 0.27.2): a key missing from config.json has this
// value, exactly as from_pretrained would build the model.
json unet2d_defaults() {
  return json{{"sample_size", nullptr},
              {"in_channels", 3},
              {"out_channels", 3},
              {"center_input_sample", false},
              {"time_embedding_type", "positional"},
              {"freq_shift", 0},
              {"flip_sin_to_cos", true},
              {"down_block_types", {"DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"}},
              {"up_block_types", {"AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"}},
              {"block_out_channels", {224, 448, 672, 896}},
              {"layers_per_block", 2},
              {"mid_block_scale_factor", 1},
              {"downsample_padding", 1},
              {"downsample_type", "conv"},
              {"upsample_type", "conv"},
              {"dropout", 0.0},
              {"act_fn", "silu"},
              {"attention_head_dim", 8},
              {"norm_num_groups", 32},
              {"attn_norm_num_groups", nullptr},
              {"norm_eps", 1e-5},
              {"resnet_time_scale_shift", "default"},
              {"add_attention", true},
              {"class_embed_type", nullptr},
              {"num_class_embeds", nullptr},
              {"num_train_timesteps", nullptr}};
}

// Refusal of one key: what it holds, why diffuse cannot take it.
[[noreturn]] void refuse(const std::string& file, const std::string& key, const json& value, const std::string& why) {
  DF_FAIL(file, ": cannot import ", key, " = ", value.dump(), ": ", why);
}

template <class T>
T get_as(const json& cfg, const std::string& file, const std::string& key) {
  T v{};
  if (!json_to(cfg.at(key), v)) refuse(file, key, cfg.at(key), "the wrong type or out of range");
  return v;
}

// Strips get_down_block's / get_up_block's accepted "UNetRes" prefix.
std::string block_type(const std::string& s) { return s.rfind("UNetRes", 0) == 0 ? s.substr(7) : s; }

}  // namespace

nn::UNetConfig unet_config_from_diffusers(const json& config, const std::string& file) {
  DF_CHECK(config.is_object(), file, ": expected a JSON object");
  json cfg = unet2d_defaults();
  for (auto it = config.begin(); it != config.end(); ++it) {
    if (it.key().rfind('_', 0) == 0) continue;  // _class_name, _diffusers_version, _name_or_path
    if (!cfg.contains(it.key()))
      refuse(file, it.key(), it.value(), "not a UNet2DModel key of diffusers " + std::string(kDiffusersVersion) +
                                             ", so its effect on the network is unknown");
    cfg[it.key()] = it.value();
  }
  if (config.contains("_class_name") && config["_class_name"] != "UNet2DModel")
    refuse(file, "_class_name", config["_class_name"], "only UNet2DModel maps onto diffuse's UNet");
  auto expect = [&](const char* key, const json& want, const std::string& why) {
    if (cfg[key] != want) refuse(file, key, cfg[key], why);
  };
  expect("center_input_sample", false, "diffuse's UNet takes its input as it is (no 2x - 1)");
  expect("time_embedding_type", "positional", "diffuse has the sinusoidal (positional) time embedding only");
  expect("act_fn", "silu", "diffuse's blocks use SiLU");
  expect("add_attention", true, "diffuse's middle block always has attention");
  expect("class_embed_type", nullptr, "diffuse's class conditioning is a plain embedding table (num_class_embeds)");
  if (get_as<double>(cfg, file, "mid_block_scale_factor") != 1.0)
    refuse(file, "mid_block_scale_factor", cfg["mid_block_scale_factor"], "diffuse's middle block does not rescale");

  nn::UNetConfig c;
  c.init = nn::InitScheme::pytorch;
  // Every GroupNorm of UNet2DModel (resnets, attention, conv_norm_out) takes norm_eps, as do
  // diffuse's; the google/ddpm-* models use 1e-6.
  c.norm_eps = get_as<double>(cfg, file, "norm_eps");
  if (!(c.norm_eps > 0 && c.norm_eps <= 1.0 && static_cast<float>(c.norm_eps) >= std::numeric_limits<float>::min()))
    refuse(file, "norm_eps", cfg["norm_eps"], "diffuse's GroupNorms take an epsilon in (0, 1] that a float holds");
  const json& ss = cfg["sample_size"];
  if (ss.is_array()) {
    if (ss.size() != 2 || ss[0] != ss[1]) refuse(file, "sample_size", ss, "diffuse's UNet takes square images");
    c.image_size = get_as<int>(json{{"sample_size", ss[0]}}, file, "sample_size");
  } else if (ss.is_null()) {
    refuse(file, "sample_size", ss, "diffuse's UNet needs the image size");
  } else {
    c.image_size = get_as<int>(cfg, file, "sample_size");
  }
  c.in_channels = get_as<int>(cfg, file, "in_channels");
  c.out_channels = get_as<int>(cfg, file, "out_channels");
  // A learned variance doubles the output (improved DDPM): eps channels, then the variance's.
  // schedule_from_diffusers checks that the scheduler agrees (variance_type learned_range).
  if (c.out_channels == 2 * c.in_channels) {
    c.learn_sigma = true;
    c.out_channels = c.in_channels;
  } else if (c.out_channels != c.in_channels) {
    refuse(file, "out_channels", cfg["out_channels"],
           "diffuse's UNet predicts in_channels (" + std::to_string(c.in_channels) +
               ") channels, or twice that with a learned variance");
  }

  const auto chans = get_as<std::vector<int>>(cfg, file, "block_out_channels");
  if (chans.empty() || chans[0] <= 0) refuse(file, "block_out_channels", cfg["block_out_channels"], "needs positive entries");
  // The sinusoidal features have block_out_channels[0] dimensions and the embedding 4x that, as
  // diffuse's base_channels; every level's width must then be a multiple of it.
  c.base_channels = chans[0];
  c.channel_mult.clear();
  for (int ch : chans) {
    if (ch <= 0 || ch % chans[0] != 0)
      refuse(file, "block_out_channels", cfg["block_out_channels"],
             "diffuse's levels are multiples of the first level's width (channel_mult x base_channels)");
    c.channel_mult.push_back(ch / chans[0]);
  }
  const size_t L = chans.size();
  c.num_res_blocks = get_as<int>(cfg, file, "layers_per_block");
  c.dropout = get_as<float>(cfg, file, "dropout");
  if (cfg["norm_num_groups"].is_null()) refuse(file, "norm_num_groups", nullptr, "diffuse needs the GroupNorm groups");
  c.groups = get_as<int>(cfg, file, "norm_num_groups");

  const std::string shift = get_as<std::string>(cfg, file, "resnet_time_scale_shift");
  if (shift == "scale_shift") {
    c.scale_shift_norm = true;
  } else if (shift != "default") {
    refuse(file, "resnet_time_scale_shift", cfg["resnet_time_scale_shift"], "diffuse has 'default' and 'scale_shift'");
  }
  // UNetMidBlock2D gives its attention a GroupNorm of attn_norm_num_groups, or, when that is null,
  // of norm_num_groups with the default time shift and none at all with scale_shift. diffuse's
  // attention always normalises with the UNet's groups.
  const json& ag = cfg["attn_norm_num_groups"];
  if (ag.is_null() ? c.scale_shift_norm : ag != json(c.groups))
    refuse(file, "attn_norm_num_groups", ag,
           c.scale_shift_norm ? "with resnet_time_scale_shift 'scale_shift' a null value leaves diffusers' middle "
                                "attention without a GroupNorm, which diffuse's always has (norm_num_groups " +
                                    std::to_string(c.groups) + " is what diffuse can take)"
                              : "diffuse's middle attention uses norm_num_groups (" + std::to_string(c.groups) + ")");

  if (get_as<std::string>(cfg, file, "time_embedding_type") == "positional") {
    const bool flip = get_as<bool>(cfg, file, "flip_sin_to_cos");
    const double fs = get_as<double>(cfg, file, "freq_shift");
    // kernels/time_embedding.h: adm = [cos, sin] over half, ddpm = [sin, cos] over half - 1.
    if (flip && fs == 0) {
      c.time_embedding = nn::TimeEmbeddingKind::adm;
    } else if (!flip && fs == 1) {
      c.time_embedding = nn::TimeEmbeddingKind::ddpm;
    } else {
      refuse(file, "flip_sin_to_cos / freq_shift", json::array({cfg["flip_sin_to_cos"], cfg["freq_shift"]}),
             "diffuse has [true, 0] (ADM) and [false, 1] (DDPM)");
    }
  }
  if (!cfg["num_class_embeds"].is_null()) {
    // diffuse's table has num_classes + 1 rows, the last being the null label of classifier-free
    // guidance: diffusers' last class becomes that row (docs/models.md).
    const int n = get_as<int>(cfg, file, "num_class_embeds");
    if (n < 2) refuse(file, "num_class_embeds", cfg["num_class_embeds"], "diffuse needs at least 2 rows");
    c.num_classes = n - 1;
  }

  const auto downs = get_as<std::vector<std::string>>(cfg, file, "down_block_types");
  const auto ups = get_as<std::vector<std::string>>(cfg, file, "up_block_types");
  if (downs.size() != L) refuse(file, "down_block_types", cfg["down_block_types"], "one per block_out_channels entry");
  if (ups.size() != L) refuse(file, "up_block_types", cfg["up_block_types"], "one per block_out_channels entry");
  const std::string dtype = get_as<std::string>(cfg, file, "downsample_type");
  const std::string utype = get_as<std::string>(cfg, file, "upsample_type");
  // Resampling of every level that resamples: "conv" (a strided / nearest+conv layer) or
  // "resnet" (a ResBlock that resamples, ADM's resblock_updown). Which one a block uses depends on
  // its type (DownBlock2D always convolves, ResnetDownsampleBlock2D always uses a ResBlock, the
  // attention blocks follow downsample_type / upsample_type); diffuse takes one for all levels.
  std::set<std::string> resample_kinds;
  c.attention_resolutions.clear();
  int size = c.image_size;
  for (size_t i = 0; i < L; ++i) {
    const std::string d = block_type(downs[i]), u = block_type(ups[L - 1 - i]);
    const std::string dkey = "down_block_types[" + std::to_string(i) + "]";
    const std::string ukey = "up_block_types[" + std::to_string(L - 1 - i) + "]";
    bool attn_d = false, attn_u = false;
    std::string dres, ures;
    if (d == "DownBlock2D") dres = "conv";
    else if (d == "ResnetDownsampleBlock2D") dres = "resnet";
    else if (d == "AttnDownBlock2D") attn_d = true, dres = dtype;
    else refuse(file, dkey, downs[i], "diffuse has DownBlock2D, AttnDownBlock2D and ResnetDownsampleBlock2D");
    if (u == "UpBlock2D") ures = "conv";
    else if (u == "ResnetUpsampleBlock2D") ures = "resnet";
    else if (u == "AttnUpBlock2D") attn_u = true, ures = utype;
    else refuse(file, ukey, ups[L - 1 - i], "diffuse has UpBlock2D, AttnUpBlock2D and ResnetUpsampleBlock2D");
    if (attn_d != attn_u)
      refuse(file, ukey, ups[L - 1 - i],
             "diffuse has attention at a resolution in both halves or in neither, and " + dkey + " is " + downs[i]);
    if (attn_d) c.attention_resolutions.push_back(size);
    if (i + 1 < L) resample_kinds.insert(dres);  // the last down block does not resample
    if (i > 0) resample_kinds.insert(ures);       // nor does the last up block (level 0)
    size /= 2;
  }
  for (const std::string& k : resample_kinds)
    if (k != "conv" && k != "resnet")
      refuse(file, "downsample_type / upsample_type", json::array({dtype, utype}), "diffuse has 'conv' and 'resnet'");
  if (resample_kinds.size() > 1)
    refuse(file, "down_block_types / up_block_types", json::array({cfg["down_block_types"], cfg["up_block_types"]}),
           "diffuse resamples every level the same way, but these mix conv and resnet resampling (check downsample_type "
           "and upsample_type too)");
  c.resblock_updown = resample_kinds.count("resnet") > 0;
  c.conv_resample = true;
  // Downsample2D's padding: 1 on every side, or 0: a zero row at the bottom and a zero column at
  // the right, then an unpadded conv (the google/ddpm-* models). ResBlock resampling has no conv
  // to pad, and diffusers ignores the key there, so any value reads as diffuse's default.
  if (!c.resblock_updown && L > 1) {
    const int pad = get_as<int>(cfg, file, "downsample_padding");
    if (pad != 0 && pad != 1)
      refuse(file, "downsample_padding", cfg["downsample_padding"],
             "diffuse's strided downsampling convolution pads 1 on every side (1) or the bottom and right only (0)");
    c.downsample_padding = pad;
  }

  // Heads: attention_head_dim channels per head in every attention block (the middle one too),
  // or one head per block when null.
  if (cfg["attention_head_dim"].is_null()) {
    c.num_heads = 1;
    c.head_channels = -1;
  } else {
    const int d = get_as<int>(cfg, file, "attention_head_dim");
    if (d <= 0) refuse(file, "attention_head_dim", cfg["attention_head_dim"], "must be positive");
    std::vector<int64_t> widths = {int64_t{chans.back()}};  // the middle block
    for (size_t i = 0; i < L; ++i)
      if (std::find(c.attention_resolutions.begin(), c.attention_resolutions.end(), c.image_size >> i) !=
          c.attention_resolutions.end())
        widths.push_back(chans[i]);
    bool one_head = true;
    for (int64_t w : widths) {
      if (w % d != 0)
        refuse(file, "attention_head_dim", cfg["attention_head_dim"],
               "it does not divide the " + std::to_string(w) + " channels of an attention block");
      one_head = one_head && w == d;
    }
    if (one_head) {
      c.num_heads = 1;
      c.head_channels = -1;
    } else {
      c.head_channels = d;
    }
  }
  try {
    c.validate();
  } catch (const Error& e) {
    DF_FAIL(file, ": the config maps to a UNet diffuse refuses: ", e.what());
  }
  return c;
}

json diffusers_config_from_unet(const nn::UNetConfig& c) {
  c.validate();
  auto refuse_export = [](const std::string& key, const json& v, const std::string& why) {
    DF_FAIL("cannot export UNet config ", key, " = ", v.dump(), " as a diffusers UNet2DModel: ", why);
  };
  if (c.rescale_residual) refuse_export("rescale_residual", true, "UNet2DModel's blocks do not rescale");
  if (c.has_context())
    refuse_export("context_dim", c.context_dim, "UNet2DModel has no cross-attention (its conditional sibling, "
                  "UNet2DConditionModel, is not exported)");
  if (!c.conv_resample && !c.resblock_updown)
    refuse_export("conv_resample", false, "UNet2DModel's down and up blocks resample with convolutions");
  const size_t L = c.channel_mult.size();
  std::vector<int> chans;
  for (int m : c.channel_mult) chans.push_back(m * c.base_channels);
  std::vector<std::string> downs(L), ups(L);
  int size = c.image_size;
  std::vector<int64_t> widths = {chans.back()};
  for (size_t i = 0; i < L; ++i) {
    const bool attn = std::find(c.attention_resolutions.begin(), c.attention_resolutions.end(), size) !=
                      c.attention_resolutions.end();
    if (attn) widths.push_back(chans[i]);
    downs[i] = attn ? "AttnDownBlock2D" : c.resblock_updown ? "ResnetDownsampleBlock2D" : "DownBlock2D";
    ups[L - 1 - i] = attn ? "AttnUpBlock2D" : c.resblock_updown ? "ResnetUpsampleBlock2D" : "UpBlock2D";
    size /= 2;
  }
  // One head dimension for every attention block: head_channels, or channels / num_heads where
  // that is the same in all of them (null: one head each).
  json head_dim = nullptr;
  if (c.head_channels > 0) {
    head_dim = c.head_channels;
  } else if (c.num_heads > 1) {
    const int64_t d = widths[0] / c.num_heads;
    for (int64_t w : widths)
      if (w % c.num_heads != 0 || w / c.num_heads != d)
        refuse_export("num_heads", c.num_heads,
                      "UNet2DModel has one attention_head_dim for all blocks, and these blocks' widths give different "
                      "head dimensions");
    head_dim = d;
  }
  json j{{"_class_name", "UNet2DModel"},
         {"_diffusers_version", kDiffusersVersion},
         {"sample_size", c.image_size},
         {"in_channels", c.in_channels},
         {"out_channels", c.output_channels()},
         {"center_input_sample", false},
         {"time_embedding_type", "positional"},
         {"freq_shift", c.time_embedding == nn::TimeEmbeddingKind::adm ? 0 : 1},
         {"flip_sin_to_cos", c.time_embedding == nn::TimeEmbeddingKind::adm},
         {"down_block_types", downs},
         {"up_block_types", ups},
         {"block_out_channels", chans},
         {"layers_per_block", c.num_res_blocks},
         {"mid_block_scale_factor", 1},
         // Meaningless with ResBlock resampling (no Downsample2D): the default there.
         {"downsample_padding", c.resblock_updown ? 1 : c.downsample_padding},
         {"downsample_type", c.resblock_updown ? "resnet" : "conv"},
         {"upsample_type", c.resblock_updown ? "resnet" : "conv"},
         {"dropout", c.dropout},
         {"act_fn", "silu"},
         {"attention_head_dim", head_dim},
         {"norm_num_groups", c.groups},
         // Explicit: with scale_shift a null would drop the middle attention's GroupNorm.
         {"attn_norm_num_groups", c.groups},
         {"norm_eps", c.norm_eps},
         {"resnet_time_scale_shift", c.scale_shift_norm ? "scale_shift" : "default"},
         {"add_attention", true},
         {"class_embed_type", nullptr},
         {"num_class_embeds", c.num_classes > 0 ? json(c.num_classes + 1) : json(nullptr)},
         {"num_train_timesteps", nullptr}};
  return j;
}

// ---- scheduler_config.json ----------------------------------------------------------------------

std::string schedule_from_diffusers(const json& s, const std::string& file, bool learn_sigma, train::TrainConfig& t) {
  DF_CHECK(s.is_object(), file, ": expected a JSON object");
  // Only the keys that define the trained model's noise process, its prediction and its DDPM
  // variance matter here; the rest (solver order, Karras sigmas, ...) choose how some scheduler
  // samples, which is the sampler's business (`diffuse sample --sampler`), and are left alone.
  auto has = [&](const char* k) { return s.contains(k) && !s[k].is_null(); };
  auto val = [&](const char* k, const json& dflt) { return has(k) ? s[k] : dflt; };
  int T = 1000;
  if (has("num_train_timesteps") && (!json_to(s["num_train_timesteps"], T) || T < 2))
    refuse(file, "num_train_timesteps", s["num_train_timesteps"], "must be an integer >= 2");
  t.timesteps = T;
  t.beta_start.reset();
  t.beta_end.reset();
  t.betas.clear();
  t.variance = train::TrainConfig{}.variance;
  if (val("rescale_betas_zero_snr", false) != false)
    refuse(file, "rescale_betas_zero_snr", s["rescale_betas_zero_snr"],
           "it makes the last step's beta 1 (alpha_bar 0, infinite noise), which diffuse's schedules do not hold");
  // A beta of the file: a finite number in (0, 1), as the training config takes it.
  auto beta = [&](const std::string& key, const json& v) {
    double b = 0;
    if (!v.is_number() || !json_to(v, b) || !(b > 0 && b < 1))
      refuse(file, key, v, "a beta is the variance of one step's noise, a number in (0, 1)");
    return b;
  };
  if (has("trained_betas")) {
    // diffusers takes trained_betas over beta_schedule, beta_start and beta_end: so does diffuse.
    const json& tb = s["trained_betas"];
    if (!tb.is_array())
      refuse(file, "trained_betas", json(json_brief(tb)), "must be a list of num_train_timesteps numbers");
    if (tb.size() != static_cast<size_t>(T))
      refuse(file, "trained_betas", json("[" + std::to_string(tb.size()) + " numbers]"),
             "one beta per step, and num_train_timesteps is " + std::to_string(T));
    for (size_t i = 0; i < tb.size(); ++i) t.betas.push_back(beta("trained_betas[" + std::to_string(i) + "]", tb[i]));
    t.schedule = train::ScheduleKind::custom;
  } else {
    // diffusers' defaults, whatever T is (diffuse's own scale with T: train::beta_range).
    double b0 = 1e-4, b1 = 0.02;
    if ((has("beta_start") && !json_to(s["beta_start"], b0)) || (has("beta_end") && !json_to(s["beta_end"], b1)))
      refuse(file, "beta_start / beta_end", json::array({s.value("beta_start", json()), s.value("beta_end", json())}),
             "must be numbers");
    const json bs = val("beta_schedule", "linear");
    if (bs == "linear" || bs == "scaled_linear") {
      t.schedule = parse_enum<train::ScheduleKind>(bs.get<std::string>(), "beta_schedule");
      b0 = beta("beta_start", b0);
      b1 = beta("beta_end", b1);
      // Left unset where they are diffuse's own default ends for T (DDPM's scaled by 1000 / T), so
      // a DDPM model's checkpoint is the one diffuse would train.
      train::TrainConfig d;
      d.timesteps = T;
      if (train::beta_range(d) != std::pair{b0, b1}) {
        t.beta_start = b0;
        t.beta_end = b1;
      }
    } else if (bs == "squaredcos_cap_v2") {
      t.schedule = train::ScheduleKind::cosine;  // improved DDPM's cosine, max beta 0.999: DiscreteSchedule::cosine
    } else if (bs == "sigmoid") {
      // GeoDiff's (Xu et al. 2022) as DDPMScheduler has it: betas = sigmoid(linspace(-6, 6, T))
      // (beta_end - beta_start) + beta_start, between the two ends; diffuse keeps them as a list.
      b0 = beta("beta_start", b0);
      b1 = beta("beta_end", b1);
      for (int i = 0; i < T; ++i)
        t.betas.push_back(diffusion::sigmoid(-6.0 + 12.0 * i / (T - 1)) * (b1 - b0) + b0);
      t.schedule = train::ScheduleKind::custom;
    } else {
      refuse(file, "beta_schedule", bs,
             "diffuse has 'linear', 'scaled_linear', 'squaredcos_cap_v2' (cosine) and 'sigmoid' (as its list of "
             "betas), and takes trained_betas");
    }
  }
  const json pt = val("prediction_type", "epsilon");
  if (pt == "epsilon") t.objective = train::Objective::eps;
  else if (pt == "sample") t.objective = train::Objective::x0;
  else if (pt == "v_prediction") t.objective = train::Objective::v;
  else refuse(file, "prediction_type", pt, "diffuse has 'epsilon', 'sample' and 'v_prediction'");
  const json vt = val("variance_type", "fixed_small");
  if (learn_sigma) {
    if (vt != "learned_range")
      refuse(file, "variance_type", vt,
             "the UNet outputs twice in_channels, which diffuse reads as improved DDPM's learned variance "
             "(variance_type 'learned_range')");
    if (t.objective != train::Objective::eps)
      refuse(file, "prediction_type", pt, "a learned variance goes with epsilon prediction in diffuse (objective hybrid)");
    t.objective = train::Objective::hybrid;
  } else if (vt == "learned" || vt == "learned_range") {
    refuse(file, "variance_type", vt, "the UNet's output has no variance channels (out_channels = in_channels)");
  } else if (vt == "fixed_large") {
    t.variance = diffusion::VarianceKind::beta;  // DDPM's other choice (Ho et al. 2020 sec. 3.2), the DDPM models' own
  } else if (vt != "fixed_small" && vt != "fixed_small_log") {
    // fixed_small_log is fixed_small's variance, which DDPMScheduler.step reaches through its log.
    refuse(file, "variance_type", vt,
           "diffuse's DDPM variance is fixed_small (the posterior's, beta_tilde), fixed_large (beta) or a hybrid "
           "model's learned_range; DDPMScheduler.step takes fixed_large_log's square root of a negative log");
  }
  if (val("thresholding", false) != false)
    refuse(file, "thresholding", s["thresholding"], "diffuse clips x0 to [-1, 1] or not at all (no dynamic thresholding)");
  std::string flags;
  const bool clip = val("clip_sample", true) == true;
  if (clip && has("clip_sample_range") && val("clip_sample_range", 1.0).get<double>() != 1.0)
    refuse(file, "clip_sample_range", s["clip_sample_range"], "diffuse clips x0 to [-1, 1]");
  if (!clip) flags += " --no-clip";
  const json sp = val("timestep_spacing", "leading");
  if (sp == "leading" || sp == "trailing") flags += " --spacing " + sp.get<std::string>();
  else if (sp != "linspace") refuse(file, "timestep_spacing", sp, "diffuse has 'leading', 'trailing' and 'linspace'");
  if (val("steps_offset", 0) != 0) refuse(file, "steps_offset", s["steps_offset"], "diffuse's spacings start at step 0");
  if (s.contains("set_alpha_to_one") && s["set_alpha_to_one"] == false)
    refuse(file, "set_alpha_to_one", false, "diffuse's samplers end at clean data (alpha_bar = 1)");
  return flags.empty() ? flags : flags.substr(1);
}

json diffusers_scheduler_from(const train::TrainConfig& t) {
  DF_CHECK(!train::continuous_time(t), "cannot export objective '", enum_name(t.objective),
           "' to diffusers: its schedule is continuous (VDM), and diffusers' schedulers take DDPM betas");
  const train::ScheduleKind kind = t.schedule;
  const auto [b0, b1] = train::beta_range(t);
  json j{{"_class_name", "DDPMScheduler"},
         {"_diffusers_version", kDiffusersVersion},
         {"num_train_timesteps", t.timesteps},
         {"beta_start", b0},
         {"beta_end", b1},
         {"beta_schedule", kind == train::ScheduleKind::cosine ? "squaredcos_cap_v2" : enum_name(kind)},
         {"trained_betas", nullptr},
         {"variance_type",
          train::learned_variance(t)                            ? "learned_range"
          : t.variance == diffusion::VarianceKind::beta ? "fixed_large"
                                                        : "fixed_small"},
         {"clip_sample", true},
         {"clip_sample_range", 1.0},
         {"prediction_type", t.objective == train::Objective::x0  ? "sample"
                            : t.objective == train::Objective::v ? "v_prediction"
                                                                 : "epsilon"},
         {"thresholding", false},
         {"timestep_spacing", "linspace"},
         {"steps_offset", 0},
         {"rescale_betas_zero_snr", false}};
  // A list of betas where no named schedule gives them: custom, and DDPM's default linear ends
  // below T = 20, which diffuse caps at 0.999 and diffusers would not.
  const bool capped = kind == train::ScheduleKind::linear && !t.beta_start && !t.beta_end && b1 > 0.999;
  if (kind == train::ScheduleKind::custom || capped) {
    j["beta_schedule"] = "linear";  // diffusers ignores it beside trained_betas
    j["trained_betas"] = train::make_schedule(t).betas();
  }
  return j;
}

// ---- weights ------------------------------------------------------------------------------------

namespace {

// Where a diffuse parameter lives in a diffusers state dict. kind: how the layouts differ.
enum class Kind { same, conv, qkv };
struct Source {
  std::string name;  // diffusers name (for qkv: the attention's prefix, "…attentions.0.")
  std::string suffix;  // for qkv: "weight" or "bias"
  Kind kind = Kind::same;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t e; (e = s.find('.', b)) != std::string::npos; b = e + 1) out.push_back(s.substr(b, e - b));
  out.push_back(s.substr(b));
  return out;
}

std::string join(const std::vector<std::string>& p, size_t from, size_t to) {
  std::string s;
  for (size_t i = from; i < to; ++i) s += (s.empty() ? "" : ".") + p[i];
  return s;
}

// The part of a name inside one layer: a ResBlock's or an AttentionBlock's children.
Source layer_source(const std::string& prefix, const std::vector<std::string>& p, size_t at) {
  static const std::map<std::string, std::string> res = {{"norm1", "norm1"}, {"conv1", "conv1"},
                                                         {"emb_proj", "time_emb_proj"}, {"norm2", "norm2"},
                                                         {"conv2", "conv2"}, {"skip", "conv_shortcut"},
                                                         {"conv", "conv"}};
  const std::string& child = p[at];
  const std::string rest = join(p, at + 1, p.size());
  if (child == "qkv") return {prefix, rest, Kind::qkv};
  if (child == "norm") return {prefix + "group_norm." + rest, "", Kind::same};
  if (child == "proj") return {prefix + "to_out.0." + rest, "", Kind::same};
  auto it = res.find(child);
  DF_CHECK(it != res.end(), "diffusers mapping: no counterpart for layer '", child, "'");
  const bool conv = child.rfind("conv", 0) == 0 || child == "skip";
  return {prefix + it->second + "." + rest, "", conv && rest == "weight" ? Kind::conv : Kind::same};
}

Source source_of(const std::string& name, size_t L) {
  const std::vector<std::string> p = split(name);
  const std::string whole = join(p, 0, p.size());
  auto conv_if_weight = [&](const std::string& n) { return p.back() == "weight" ? Kind::conv : Kind::same; };
  if (p[0] == "time")
    return {std::string("time_embedding.") + (p[1] == "fc1" ? "linear_1." : "linear_2.") + p[2], "", Kind::same};
  if (p[0] == "label_emb") return {"class_embedding." + p[1], "", Kind::same};
  if (p[0] == "conv_in") return {whole, "", conv_if_weight(whole)};
  if (p[0] == "out_norm") return {"conv_norm_out." + p[1], "", Kind::same};
  if (p[0] == "out_conv") return {"conv_out." + p[1], "", conv_if_weight(whole)};
  if (p[0] == "mid") {
    const std::string pre = p[1] == "attn" ? "mid_block.attentions.0." : p[1] == "res1" ? "mid_block.resnets.0."
                                                                                         : "mid_block.resnets.1.";
    return layer_source(pre, p, 2);
  }
  DF_CHECK((p[0] == "down" || p[0] == "up") && p.size() >= 4, "diffusers mapping: unexpected parameter ", name);
  const size_t level = std::stoul(p[1]);
  const std::string block = p[0] == "down" ? "down_blocks." + p[1] + "." : "up_blocks." + std::to_string(L - 1 - level) + ".";
  if (p[2] == "res") return layer_source(block + "resnets." + p[3] + ".", p, 4);
  if (p[2] == "attn") return layer_source(block + "attentions." + p[3] + ".", p, 4);
  // downsample / upsample: a Downsample's / Upsample's conv, or a resampling ResBlock.
  return layer_source(block + (p[0] == "down" ? "downsamplers.0." : "upsamplers.0."), p, 3);
}

// diffusers 0.27 saves attention as to_q / to_k / to_v / to_out.0; files from before 0.14 name
// them query / key / value / proj_attn (from_pretrained renames them on load), sometimes as 1x1
// convolutions.
const std::map<std::string, std::string> kLegacyAttention = {
    {"to_q.", "query."}, {"to_k.", "key."}, {"to_v.", "value."}, {"to_out.0.", "proj_attn."}};

const Tensor* find_tensor(const std::map<std::string, Tensor>& sd, const std::string& name, std::string* used) {
  auto it = sd.find(name);
  if (it == sd.end())
    for (const auto& [now, old] : kLegacyAttention) {
      const size_t at = name.find(now);
      if (at == std::string::npos) continue;
      it = sd.find(name.substr(0, at) + old + name.substr(at + now.size()));
      if (it != sd.end()) break;
    }
  if (it == sd.end()) return nullptr;
  *used = it->first;
  return &it->second;
}

// (Cout, Cin, KH, KW) -> (Cout, KH, KW, Cin)
Tensor oihw_to_ohwi(const Tensor& w) {
  const int64_t O = w.size(0), I = w.size(1), H = w.size(2), W = w.size(3);
  Tensor out = Tensor::empty({O, H, W, I});
  const float* s = w.data<float>();
  float* d = out.data<float>();
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) d[((o * H + y) * W + x) * I + i] = s[((o * I + i) * H + y) * W + x];
  return out;
}

Tensor ohwi_to_oihw(const Tensor& w) {
  const int64_t O = w.size(0), H = w.size(1), W = w.size(2), I = w.size(3);
  Tensor out = Tensor::empty({O, I, H, W});
  const float* s = w.data<float>();
  float* d = out.data<float>();
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) d[((o * I + i) * H + y) * W + x] = s[((o * H + y) * W + x) * I + i];
  return out;
}

Tensor as_f32(const Tensor& t, const std::string& file, const std::string& name) {
  DF_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f16 || t.dtype() == DType::bf16 || t.dtype() == DType::f64,
           file, ": tensor '", name, "' is ", t.str(), "; diffuse imports floating-point weights");
  return t.dtype() == DType::f32 ? t : t.to(DType::f32);
}

// A (C, C) linear weight stored as a (C, C, 1, 1) convolution by old files.
Tensor as_linear(const Tensor& t) {
  if (t.dim() == 4 && t.size(2) == 1 && t.size(3) == 1) return t.reshape({t.size(0), t.size(1)});
  return t;
}

std::string shape_str(const Tensor& t) { return t.shape().str(); }

// Whether two configs have the same noise process, prediction and DDPM variance.
bool same_schedule(const train::TrainConfig& a, const train::TrainConfig& b) {
  return a.schedule == b.schedule && a.timesteps == b.timesteps && a.objective == b.objective &&
         a.beta_start == b.beta_start && a.beta_end == b.beta_end && a.betas == b.betas && a.variance == b.variance;
}

}  // namespace

DiffusersModel read_diffusers(const std::string& dir) {
  DF_CHECK(fs::is_directory(dir), dir, " is not a folder; expected a diffusers UNet2DModel folder (config.json and "
           "diffusion_pytorch_model.safetensors) or a pipeline folder with unet/ in it");
  fs::path unet_dir = dir;
  if (!fs::exists(unet_dir / "config.json") && fs::exists(unet_dir / "unet" / "config.json")) unet_dir /= "unet";
  const fs::path cfg_path = unet_dir / "config.json";
  DF_CHECK(fs::exists(cfg_path), dir, ": no config.json here or in ", (fs::path(dir) / "unet").string(),
           "; expected a diffusers UNet2DModel folder");
  const fs::path w_path = unet_dir / "diffusion_pytorch_model.safetensors";
  if (!fs::exists(w_path)) {
    DF_CHECK(!fs::exists(unet_dir / "diffusion_pytorch_model.safetensors.index.json"), unet_dir.string(),
             ": the weights are split into shards; diffuse reads one diffusion_pytorch_model.safetensors (re-save with "
             "save_pretrained(..., max_shard_size=\"100GB\"))");
    DF_FAIL(w_path.string(), " is missing",
            fs::exists(unet_dir / "diffusion_pytorch_model.bin")
                ? " (there is a .bin, a pickle, which diffuse does not read: re-save with save_pretrained(..., "
                  "safe_serialization=True))"
                : "; the folder must hold the UNet's weights as saved by save_pretrained");
  }
  DiffusersModel m;
  const json cfg = read_json_file(cfg_path);
  m.unet = unet_config_from_diffusers(cfg, cfg_path.string());

  // The schedule: a pipeline's scheduler/ or a scheduler_config.json beside the UNet's files.
  fs::path sched_path;
  for (const fs::path& p : {fs::path(dir) / "scheduler" / "scheduler_config.json", fs::path(dir) / "scheduler_config.json",
                            unet_dir / "scheduler_config.json"})
    if (fs::exists(p)) {
      sched_path = p;
      break;
    }
  m.scheduler = sched_path.empty() ? json(nullptr) : read_json_file(sched_path);
  m.train.preset = "tiny";
  m.sample_flags = schedule_from_diffusers(sched_path.empty() ? json::object() : m.scheduler,
                                           sched_path.empty() ? "(no scheduler_config.json)" : sched_path.string(),
                                           m.unet.learn_sigma, m.train);
  m.train.model = m.unet.to_json();
  m.train.class_cond = m.unet.num_classes > 0;
  // The training config the checkpoint will hold, through the check every reader of it makes.
  try {
    m.train = train::TrainConfig::from_json(m.train.to_json());
  } catch (const Error& e) {
    DF_FAIL(sched_path.empty() ? cfg_path.string() : sched_path.string(), ": maps to a training config diffuse "
            "refuses: ", e.message());
  }

  // The weights, by name, converted; every problem collected before failing.
  const SafeTensors st = read_safetensors(w_path.string());
  const std::string wfile = w_path.string();
  // The UNet that config.json describes is built to learn each parameter's shape. A config of a
  // far larger model than the weights file holds is refused by an allocation limit instead of
  // allocated, as train::load_checkpoint refuses one: the file's tensors as f32, twice over, plus
  // room for what construction allocates besides.
  size_t weight_bytes = size_t{1} << 20;
  for (const auto& [name, t] : st.tensors)
    weight_bytes += 2 * allocation_size_class(static_cast<size_t>(t.numel()) * sizeof(float));
  std::unique_ptr<nn::UNet> shape_of;
  try {
    HostAllocationLimit limit(weight_bytes, "the model that config.json describes");
    shape_of = std::make_unique<nn::UNet>(m.unet, nn::UNet::Undrawn{});
  } catch (const Error& e) {
    DF_FAIL(cfg_path.string(), " describes a larger model than ", wfile, " holds: ", e.message());
  }
  const size_t L = m.unet.channel_mult.size();
  std::set<std::string> used;
  std::vector<std::string> problems;
  for (const auto& [name, var] : shape_of->named_parameters()) {
    const Tensor& want = var.value();
    const Source src = source_of(name, L);
    Tensor got;
    if (src.kind == Kind::qkv) {
      std::vector<Tensor> parts;
      for (const char* part : {"to_q.", "to_k.", "to_v."}) {
        std::string u;
        const Tensor* t = find_tensor(st.tensors, src.name + part + src.suffix, &u);
        if (!t) {
          problems.push_back("missing: " + src.name + part + src.suffix + " (for " + name + ")");
          continue;
        }
        used.insert(u);
        parts.push_back(as_linear(as_f32(*t, wfile, u)));
      }
      if (parts.size() != 3) continue;
      const int64_t C = want.size(0) / 3;
      bool ok = true;
      for (const Tensor& t : parts) ok = ok && t.numel() * 3 == want.numel() && t.size(0) == C;
      if (!ok) {
        problems.push_back("shape mismatch: " + src.name + "to_q/to_k/to_v." + src.suffix + " are " +
                           shape_str(parts[0]) + " but the config implies " + Shape({C, want.numel() / (3 * C)}).str() +
                           " (" + name + ")");
        continue;
      }
      got = Tensor::empty(want.shape());
      for (int k = 0; k < 3; ++k)
        std::copy_n(parts[k].data<float>(), parts[k].numel(), got.data<float>() + k * parts[k].numel());
    } else {
      std::string u;
      const Tensor* t = find_tensor(st.tensors, src.name, &u);
      if (!t) {
        problems.push_back("missing: " + src.name + " (for " + name + ")");
        continue;
      }
      used.insert(u);
      got = as_f32(*t, wfile, u);
      if (src.kind == Kind::conv && got.dim() == 4) got = oihw_to_ohwi(got);
      else if (want.dim() == 2) got = as_linear(got);
      if (!(got.shape() == want.shape())) {
        const Shape implied = src.kind == Kind::conv ? Shape{want.size(0), want.size(3), want.size(1), want.size(2)}
                                                     : want.shape();
        problems.push_back("shape mismatch: " + u + " is " + shape_str(*t) + " but the config implies " +
                           implied.str() + " (" + name + ")");
        continue;
      }
      if (got.same_storage(*t)) got = got.clone();
    }
    m.weights.emplace(name, got);
  }
  for (const auto& [name, t] : st.tensors)
    if (!used.count(name)) problems.push_back("unexpected: " + name + " " + shape_str(t) + " (the config has no place for it)");
  if (!problems.empty()) {
    std::string all;
    const size_t shown = std::min<size_t>(problems.size(), 12);
    for (size_t i = 0; i < shown; ++i) all += "\n  " + problems[i];
    if (shown < problems.size()) all += "\n  ... and " + std::to_string(problems.size() - shown) + " more";
    DF_FAIL(wfile, " does not match ", cfg_path.string(), " (", problems.size(), " problem",
            problems.size() == 1 ? "" : "s", "):", all);
  }
  return m;
}

DiffusersModel import_diffusers(const std::string& dir, const std::string& out) {
  DiffusersModel m = read_diffusers(dir);
  // The checkpoint diffuse's trainer writes, at step 0: live weights and the same as EMA weights
  // (load_checkpoint reads the EMA ones unless asked otherwise).
  nn::UNet unet(m.unet, nn::UNet::Undrawn{});
  unet.load_state(m.weights);
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& [name, var] : unet.named_parameters()) tensors.emplace_back("model." + name, var.value());
  for (const auto& [name, var] : unet.named_parameters()) tensors.emplace_back("ema." + name, var.value());
  std::map<std::string, std::string> meta{{"format", "diffuse-checkpoint-1"},
                                          {"config", m.train.to_json().dump()},
                                          {"unet", m.unet.to_json().dump()},
                                          {"step", "0"},
                                          {"num_classes", std::to_string(m.unet.num_classes)},
                                          {"source", "diffusers UNet2DModel (" + fs::absolute(dir).string() + ")"}};
  if (!m.scheduler.is_null()) meta[kSchedulerMeta] = m.scheduler.dump();
  write_safetensors_atomic(out, tensors, meta);
  return m;
}

void export_diffusers(const std::string& checkpoint, const std::string& dir) {
  const train::LoadedModel lm = train::load_checkpoint(checkpoint, Device::cpu(), /*ema=*/true);
  DF_CHECK(lm.autoencoder == nullptr, checkpoint, " is a latent diffusion model; export-diffusers writes a "
           "UNet2DModel alone, and its autoencoder has no diffusers counterpart here yet");
  const nn::UNetConfig& c = lm.unet->config();
  train::refuse_super_res(c, checkpoint, "export-diffusers (UNet2DModel has no low-resolution input)");
  json cfg;
  json sched;
  try {
    cfg = diffusers_config_from_unet(c);
    sched = diffusers_scheduler_from(lm.config);
  } catch (const Error& e) {
    DF_FAIL(checkpoint, ": ", e.what());
  }
  // An imported model keeps its scheduler's own settings (spacing, clipping, class name) when they
  // still describe the same schedule.
  const SafeTensors meta_only = read_safetensors(checkpoint);
  if (auto it = meta_only.metadata.find(kSchedulerMeta); it != meta_only.metadata.end()) {
    try {
      json orig = json::parse(it->second);
      train::TrainConfig again;
      schedule_from_diffusers(orig, "stored scheduler config", c.learn_sigma, again);
      if (same_schedule(again, lm.config)) sched = orig;
    } catch (const std::exception&) {
      // A stored config that no longer maps is replaced by the one made from the checkpoint.
    }
  }
  const size_t L = c.channel_mult.size();
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& [name, var] : lm.unet->named_parameters()) {
    const Source src = source_of(name, L);
    const Tensor v = var.value().to(Device::cpu());
    if (src.kind == Kind::qkv) {
      const int64_t C = v.size(0) / 3, per = v.numel() / 3;
      const char* parts[3] = {"to_q.", "to_k.", "to_v."};
      for (int k = 0; k < 3; ++k) {
        Tensor t = Tensor::empty(v.dim() == 2 ? Shape{C, v.size(1)} : Shape{C});
        std::copy_n(v.data<float>() + k * per, per, t.data<float>());
        tensors.emplace_back(src.name + parts[k] + src.suffix, t);
      }
    } else {
      tensors.emplace_back(src.name, src.kind == Kind::conv && v.dim() == 4 ? ohwi_to_oihw(v) : v.clone());
    }
  }
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::error_code ec;
  fs::create_directories(dir, ec);
  DF_CHECK(!ec && fs::is_directory(dir), "cannot create the folder ", dir, ": ", ec ? ec.message() : "not a folder");
  // Weights first: a config.json beside missing or stale weights would be the worse half-state.
  write_safetensors_atomic((fs::path(dir) / "diffusion_pytorch_model.safetensors").string(), tensors, {{"format", "pt"}});
  const std::string cj = cfg.dump(2) + "\n", sj = sched.dump(2) + "\n";
  write_file_atomic((fs::path(dir) / "config.json").string(), cj.data(), cj.size());
  write_file_atomic((fs::path(dir) / "scheduler_config.json").string(), sj.data(), sj.size());
}

}  // namespace diffuse::interop
