#include "models/train/config.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/json_util.h"

namespace diffuse::train {

// ---- configuration -----------------------------------------------------------------------------

nlohmann::json TrainConfig::to_json() const {
  nlohmann::json j = {{"preset", preset},
          {"model", model},
          {"objective", enum_name(objective)},
          {"schedule", enum_name(schedule)},
          {"timesteps", timesteps},
          {"loss_weight", enum_name(loss_weight)},
          {"lr", lr},
          {"beta1", beta1},
          {"beta2", beta2},
          {"adam_eps", adam_eps},
          {"weight_decay", weight_decay},
          {"warmup", warmup},
          {"grad_clip", grad_clip},
          {"ema_decay", ema_decay},
          {"ema_warmup", ema_warmup},
          {"batch", batch},
          {"steps", steps},
          {"epochs", epochs},
          {"class_cond", class_cond},
          {"label_dropout", label_dropout},
          {"dataset", dataset},
          {"flip", flip},
          {"seed", seed},
          {"device", device},
          {"bf16", bf16},
          {"cuda_graph", cuda_graph},
          {"out_dir", out_dir},
          {"log_every", log_every},
          {"sample_every", sample_every},
          {"checkpoint_every", checkpoint_every},
          {"sample_count", sample_count},
          {"sample_steps", sample_steps},
          {"max_nonfinite", max_nonfinite}};
  // Written only when set, so a config that does not use them reads and writes as before.
  if (beta_start) j["beta_start"] = *beta_start;
  if (beta_end) j["beta_end"] = *beta_end;
  if (!betas.empty()) j["betas"] = betas;
  if (variance != TrainConfig{}.variance) j["variance"] = enum_name(variance);
  if (t_sampling != TrainConfig{}.t_sampling) j["t_sampling"] = enum_name(t_sampling);
  return j;
}

namespace {

// The keys to_json writes only when they are set.
constexpr const char* kOptionalKeys[] = {"beta_start", "beta_end", "betas", "variance", "t_sampling"};

// A beta of the config (beta_start, beta_end, an entry of betas): a finite number in (0, 1).
double beta_value(const nlohmann::json& v, const std::string& key) {
  DF_CHECK(v.is_number(), "training config: key '", key, "' must be a number in (0, 1), not ", json_brief(v));
  const double b = v.get<double>();
  DF_CHECK(std::isfinite(b), "training config: key '", key, "' = ", b, " is not a finite number");
  DF_CHECK(b > 0 && b < 1, "training config: key '", key, "' = ", b, " is outside (0, 1) (a beta is the variance "
           "of one step's noise)");
  return b;
}

// The betas' keys against the objective and schedule, and their values.
void check_betas(const TrainConfig& c) {
  const Objective objective = c.objective;
  const ScheduleKind schedule = c.schedule;
  const std::string_view s = enum_name(schedule);
  const bool given_range = c.beta_start || c.beta_end;
  if (objective == Objective::vdm) {
    DF_CHECK(!given_range && c.betas.empty(), "training config: key '",
             c.betas.empty() ? "beta_start / beta_end" : "betas",
             "' with objective vdm, whose schedule is continuous (no DDPM betas)");
    return;
  }
  const bool ranged = schedule == ScheduleKind::linear || schedule == ScheduleKind::scaled_linear;
  DF_CHECK(!given_range || ranged, "training config: key '", c.beta_start ? "beta_start" : "beta_end", "' goes with "
           "schedule linear or scaled_linear, not '", s, "'",
           schedule == ScheduleKind::custom ? " (custom lists its betas)" : "");
  DF_CHECK(c.betas.empty() || schedule == ScheduleKind::custom, "training config: key 'betas' goes with schedule "
           "custom, not '", s, "'");
  if (c.beta_start) beta_value(*c.beta_start, "beta_start");
  if (c.beta_end) beta_value(*c.beta_end, "beta_end");
  // A default end is DDPM's scaled by 1000 / T, which leaves (0, 1) below T = 20: linear alone
  // caps it at 0.999 (improved DDPM), and only when neither end is given, as before.
  if (schedule == ScheduleKind::scaled_linear || (schedule == ScheduleKind::linear && given_range)) {
    const auto [b0, b1] = beta_range(c);
    for (const auto& [key, given, b] : {std::tuple{"beta_start", c.beta_start.has_value(), b0},
                                        std::tuple{"beta_end", c.beta_end.has_value(), b1}})
      DF_CHECK(given || (b > 0 && b < 1), "training config: schedule '", s, "' with timesteps ", c.timesteps, ": ",
               key, " defaults to DDPM's scaled by 1000 / timesteps, ", b, ", outside (0, 1); set ", key);
  }
  if (schedule == ScheduleKind::custom) {
    DF_CHECK(!c.betas.empty(), "training config: schedule 'custom' needs key 'betas', the ", c.timesteps,
             " betas in (0, 1)");
    DF_CHECK(c.betas.size() == static_cast<size_t>(c.timesteps), "training config: key 'betas' has ", c.betas.size(),
             " entries but timesteps is ", c.timesteps, " (one beta per step)");
    for (size_t i = 0; i < c.betas.size(); ++i) beta_value(c.betas[i], "betas[" + std::to_string(i) + "]");
  }
}

}  // namespace

TrainConfig TrainConfig::from_json(const nlohmann::json& j) {
  DF_CHECK(j.is_object(), "training config: expected a JSON object");
  TrainConfig c;
  const nlohmann::json known = c.to_json();
  for (auto it = j.begin(); it != j.end(); ++it)
    DF_CHECK(known.contains(it.key()) || std::find(std::begin(kOptionalKeys), std::end(kOptionalKeys), it.key()) !=
                                             std::end(kOptionalKeys),
             "training config: unknown key '", it.key(), "'");
  // json_to, not get<T>: nlohmann's conversions are unchecked casts (core/json_util.h).
  auto get = [&](const char* key, auto& field) {
    if (j.contains(key) && !json_to(j.at(key), field))
      DF_FAIL("training config: key '", key, "' has the wrong type or is out of range: ", json_brief(j.at(key)));
  };
  // The enumerated keys through their one parser each: an unknown name is refused with the list.
  auto get_enum = [&](const char* key, auto& field) {
    std::string name;
    get(key, name);
    if (j.contains(key)) field = parse_enum<std::decay_t<decltype(field)>>(name, key, "training config");
  };
  get("preset", c.preset);
  if (j.contains("model")) {
    DF_CHECK(j["model"].is_object(), "training config: 'model' must be an object of UNet keys");
    c.model = j["model"];
  }
  get_enum("objective", c.objective);
  get_enum("schedule", c.schedule);
  get("timesteps", c.timesteps);
  if (j.contains("beta_start")) c.beta_start = beta_value(j["beta_start"], "beta_start");
  if (j.contains("beta_end")) c.beta_end = beta_value(j["beta_end"], "beta_end");
  if (j.contains("betas")) {
    DF_CHECK(j["betas"].is_array(), "training config: key 'betas' must be an array of numbers in (0, 1), not ",
             json_brief(j["betas"]));
    c.betas.clear();
    for (size_t i = 0; i < j["betas"].size(); ++i)
      c.betas.push_back(beta_value(j["betas"][i], "betas[" + std::to_string(i) + "]"));
  }
  get_enum("variance", c.variance);
  get_enum("loss_weight", c.loss_weight);
  get_enum("t_sampling", c.t_sampling);
  get("lr", c.lr);
  get("beta1", c.beta1);
  get("beta2", c.beta2);
  get("adam_eps", c.adam_eps);
  get("weight_decay", c.weight_decay);
  get("warmup", c.warmup);
  get("grad_clip", c.grad_clip);
  get("ema_decay", c.ema_decay);
  get("ema_warmup", c.ema_warmup);
  get("batch", c.batch);
  get("steps", c.steps);
  get("epochs", c.epochs);
  get("class_cond", c.class_cond);
  get("label_dropout", c.label_dropout);
  get("dataset", c.dataset);
  get("flip", c.flip);
  get("seed", c.seed);
  get("device", c.device);
  get("bf16", c.bf16);
  get("cuda_graph", c.cuda_graph);
  get("out_dir", c.out_dir);
  get("log_every", c.log_every);
  get("sample_every", c.sample_every);
  get("checkpoint_every", c.checkpoint_every);
  get("sample_count", c.sample_count);
  get("sample_steps", c.sample_steps);
  get("max_nonfinite", c.max_nonfinite);
  const Objective objective = c.objective;
  const ScheduleKind schedule = c.schedule;
  // Importance sampling of t needs a loss over discrete steps with a VLB term, whose per-step
  // terms differ by orders of magnitude (improved DDPM sec. 3.3): objective hybrid.
  if (c.t_sampling == TSampling::importance)
    DF_CHECK(objective == Objective::hybrid, "training config: t_sampling 'importance' with objective ",
             enum_name(objective),
             objective == Objective::vdm
                 ? ": the VDM loss draws continuous t (low-discrepancy), not one of T discrete steps to importance-sample"
                 : ", whose loss has no VLB term; importance sampling of t goes with objective hybrid (or use "
                   "t_sampling uniform)");
  check_device_spec(c.device, "training config");
  {
    const std::vector<std::string> presets = nn::UNetConfig::preset_names();
    std::string list;
    for (size_t i = 0; i < presets.size(); ++i) list += (i ? i + 1 == presets.size() ? " or " : ", " : "") + presets[i];
    DF_CHECK(std::find(presets.begin(), presets.end(), c.preset) != presets.end(),
             "training config: unknown preset '", c.preset, "' (expected ", list, ")");
  }
  if (objective == Objective::vdm)
    DF_CHECK(schedule == ScheduleKind::linear || schedule == ScheduleKind::learned, "training config: schedule '",
             enum_name(schedule), "' with objective vdm (expected linear, VDM's fixed linear log-SNR, or learned)");
  else
    DF_CHECK(schedule != ScheduleKind::learned, "training config: schedule 'learned' needs objective vdm (with "
             "objective '", enum_name(objective), "' the schedule is linear, scaled_linear, cosine or custom)");
  check_betas(c);
  {
    const diffusion::VarianceKind v = c.variance;
    DF_CHECK(v != diffusion::VarianceKind::learned, "training config: variance 'learned' comes with objective "
             "hybrid, whose network outputs it (expected beta_tilde or beta)");
    DF_CHECK(v == diffusion::VarianceKind::beta_tilde || objective == Objective::eps || objective == Objective::x0 ||
                 objective == Objective::v,
             "training config: variance '", enum_name(v), "' with objective ", enum_name(objective), ", which ",
             objective == Objective::hybrid ? "learns its variance" : "samples with VDM's own steps",
             " (leave variance out)");
  }
  DF_CHECK(objective != Objective::vdm || c.loss_weight == LossWeight::none, "training config: loss_weight '",
           enum_name(c.loss_weight),
           "' with objective vdm: the VDM loss is the likelihood bound itself, which a weight would change");
  DF_CHECK(c.timesteps >= 2, "training config: timesteps must be at least 2");
  DF_CHECK(c.batch >= 1, "training config: batch must be at least 1");
  DF_CHECK(c.steps >= 1, "training config: steps must be at least 1");
  DF_CHECK(c.epochs >= 0 && c.epochs <= 1e6, "training config: epochs must be in [0, 1e6] (0: use steps)");
  DF_CHECK(c.lr > 0, "training config: lr must be positive");
  DF_CHECK(c.label_dropout >= 0 && c.label_dropout < 1, "training config: label_dropout must be in [0, 1)");
  DF_CHECK(c.ema_decay >= 0 && c.ema_decay < 1, "training config: ema_decay must be in [0, 1)");
  DF_CHECK(c.sample_count >= 1 && c.sample_steps >= 1, "training config: sample_count and sample_steps must be >= 1");
  return c;
}

nn::UNetConfig TrainConfig::unet_config(int image_size, int channels, int num_classes) const {
  nlohmann::json j = nn::UNetConfig::preset(preset).to_json();
  j["image_size"] = image_size;
  j["in_channels"] = channels;
  j["out_channels"] = channels;
  j["num_classes"] = class_cond ? num_classes : 0;
  for (auto it = model.begin(); it != model.end(); ++it) j[it.key()] = it.value();
  // The objective decides the output channels: the hybrid loss trains a learned variance, 2C
  // channels (eps, then the variance); every other objective regresses C. A preset's learn_sigma
  // (imagenet64) follows the objective; an explicit model key that contradicts it is an error.
  const bool hybrid = objective == Objective::hybrid;
  DF_CHECK(!model.contains("learn_sigma") || model.at("learn_sigma") == hybrid, "training config: model key "
           "learn_sigma = ", model.contains("learn_sigma") ? model.at("learn_sigma").dump() : "", " but objective '",
           enum_name(objective), "' ", hybrid ? "needs" : "cannot train", " a learned variance (use --objective hybrid for one)");
  j["learn_sigma"] = hybrid;
  nn::UNetConfig u = nn::UNetConfig::from_json(j);
  u.validate();
  return u;
}

void check_device_spec(std::string_view spec, std::string_view where) {
  try {
    parse_device_spec(spec);
  } catch (const Error& e) {
    if (where.empty()) throw;
    DF_FAIL(where, ": ", e.message());
  }
}

std::string device_step_unsupported(const TrainConfig& c) {
  // The device step takes no labels (the UNet checks them on the host, which a captured step
  // cannot) and regresses one target with a weighted MSE: no VLB term (hybrid), no continuous
  // time and learned schedule (vdm).
  if (c.class_cond) return "--class-cond";
  if (c.model.contains("num_classes") && c.model.at("num_classes") != 0) return "model key num_classes";
  const Objective o = c.objective;
  if (o != Objective::eps && o != Objective::x0 && o != Objective::v) return "--objective " + std::string(enum_name(o));
  // The device step draws its steps uniformly in its own kernels and keeps no loss history.
  if (c.t_sampling != TSampling::uniform) return "--t-sampling " + std::string(enum_name(c.t_sampling));
  return "";
}

TrainingDevice choose_training_device(const TrainConfig& c, bool cuda_available) {
  const std::optional<Device> asked = parse_device_spec(c.device);  // nullopt: auto
  if (asked && asked->is_cpu()) return {Device::cpu(), ""};
  const std::string unsupported = device_step_unsupported(c);
  if (!asked) {
    if (!cuda_available) return {Device::cpu(), ""};
    if (unsupported.empty()) return {Device::cuda(0), ""};
    return {Device::cpu(), "--device auto: " + unsupported + " is not in the GPU training step yet; training on the cpu"};
  }
  DF_CHECK(unsupported.empty(), unsupported, " is not supported by the GPU training step (--device ", c.device,
           "); train it with --device cpu, or --device auto to let diffuse choose");
  return {resolve_device(c.device), ""};
}

std::pair<double, double> beta_range(const TrainConfig& c) {
  const double scale = 1000.0 / c.timesteps;
  // The products DiscreteSchedule::linear forms, so the unset case is the same betas either way.
  return {c.beta_start.value_or(scale * kDdpmBetaStart), c.beta_end.value_or(scale * kDdpmBetaEnd)};
}

diffusion::DiscreteSchedule make_schedule(const TrainConfig& c) {
  DF_CHECK(!continuous_time(c), "objective vdm has a continuous schedule (", enum_name(c.schedule), "), not DDPM "
           "betas: use "
           "model_schedule");
  using diffusion::DiscreteSchedule;
  switch (c.schedule) {
    case ScheduleKind::cosine: return DiscreteSchedule::cosine(c.timesteps);
    case ScheduleKind::scaled_linear: {
      const auto [b0, b1] = beta_range(c);
      return DiscreteSchedule::scaled_linear(c.timesteps, b0, b1);
    }
    case ScheduleKind::custom:
      DF_CHECK(c.betas.size() == static_cast<size_t>(c.timesteps), "training config: key 'betas' has ",
               c.betas.size(), " entries but timesteps is ", c.timesteps);
      return DiscreteSchedule(c.betas, "custom");
    case ScheduleKind::linear:
      if (!c.beta_start && !c.beta_end) return DiscreteSchedule::linear(c.timesteps, kDdpmBetaStart, kDdpmBetaEnd);
      {
        const auto [b0, b1] = beta_range(c);
        return DiscreteSchedule::linear_range(c.timesteps, b0, b1);
      }
    case ScheduleKind::learned: break;
  }
  DF_FAIL("training config: schedule 'learned' needs objective vdm");
}

diffusion::VarianceKind ancestral_variance(const TrainConfig& c) {
  if (learned_variance(c)) return diffusion::VarianceKind::learned;
  return c.variance;
}

diffusion::Prediction prediction_of(const TrainConfig& c) {
  return prediction_of(c.objective);
}

diffusion::Prediction prediction_of(Objective o) {
  switch (o) {
    case Objective::x0: return diffusion::Prediction::x0;
    case Objective::v: return diffusion::Prediction::v;
    case Objective::eps:
    case Objective::hybrid:  // eps, plus the variance channels
    case Objective::vdm: return diffusion::Prediction::eps;
  }
  DF_FAIL("prediction_of: an objective without a name");
}

bool learned_variance(const TrainConfig& c) { return c.objective == Objective::hybrid; }

bool continuous_time(const TrainConfig& c) { return c.objective == Objective::vdm; }

std::shared_ptr<nn::SNRNet> make_snr_net(const TrainConfig& c) {
  if (!continuous_time(c) || c.schedule != ScheduleKind::learned) return nullptr;
  // Its own init stream, so the UNet's init is the same with either schedule.
  return std::make_shared<nn::SNRNet>(1024, static_cast<float>(kVdmGammaMin), static_cast<float>(kVdmGammaMax),
                                      c.seed ^ 0x5e11a7edull);
}

}  // namespace diffuse::train
