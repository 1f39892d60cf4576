#include "models/train/config.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/check.h"
#include "core/json_util.h"
#include "models/train/config_fields.h"

namespace diffuse::train {

// ---- configuration -----------------------------------------------------------------------------
//
// Every field once, in config_fields.h: to_json, from_json and the per-field half of validate walk
// that list; what follows here is how each C++ type of a field travels as JSON.

namespace {

template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};

template <class T>
nlohmann::json json_of(const T& v) {
  if constexpr (std::is_enum_v<T>) return enum_name(v);
  else if constexpr (is_optional<T>::value) return *v;
  else return v;
}

template <class T>
bool is_set(const T& v, const T& default_value) {
  if constexpr (is_optional<T>::value) return v.has_value();
  else if constexpr (requires { v.empty(); }) return !v.empty();
  else return !(v == default_value);
}

// A value in a refusal: names quoted, numbers as they are.
template <class T>
std::string value_text(const T& v) {
  if constexpr (std::is_same_v<T, std::string>) return "'" + v + "'";
  else if constexpr (std::is_same_v<T, nlohmann::json>) return json_brief(v);
  else return json_brief(json_of(v));
}

// The generic reader: the JSON type and the C++ range of T (json_to), an enumeration's names
// through its one parser, and numbers finite.
template <class T>
void read_value(const nlohmann::json& v, const std::string& key, T& out) {
  if constexpr (std::is_enum_v<T>) {
    std::string name;
    DF_CHECK(json_to(v, name), "training config: key '", key, "' must be a string (one of ", enum_list<T>(),
             "), not ", json_brief(v));
    out = parse_enum<T>(name, key, "training config");
  } else if constexpr (std::is_same_v<T, nlohmann::json>) {
    out = v;
  } else if constexpr (is_optional<T>::value) {
    typename T::value_type x{};
    read_value(v, key, x);
    out = x;
  } else {
    if (!json_to(v, out))
      DF_FAIL("training config: key '", key, "' has the wrong type or is out of range: ", json_brief(v));
    if constexpr (std::is_floating_point_v<T>)
      DF_CHECK(std::isfinite(out), "training config: key '", key, "' = ", out, " is not a finite number");
  }
}

// The betas' keys against the objective and schedule (each value's own range is its field's check).
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
  }
}

}  // namespace

namespace field_checks {

std::string preset(const std::string& p) {
  const std::vector<std::string> presets = nn::UNetConfig::preset_names();
  if (std::find(presets.begin(), presets.end(), p) != presets.end()) return "";
  std::string list;
  for (size_t i = 0; i < presets.size(); ++i) list += (i ? i + 1 == presets.size() ? " or " : ", " : "") + presets[i];
  return "unknown preset '" + p + "' (expected " + list + ")";
}

std::string device(const std::string& d) {
  try {
    parse_device_spec(d);
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

std::vector<std::string> device_forms() { return {"cpu", "cuda", "cuda:N", "auto"}; }

std::string model(const nlohmann::json& m) {
  return m.is_object() ? "" : "must be an object of UNet keys, not " + json_brief(m);
}

std::string beta(const std::optional<double>& b) {
  return !b || (*b > 0 && *b < 1) ? "" : "must be in (0, 1) (a beta is the variance of one step's noise)";
}

std::string betas(const std::vector<double>& b) {
  for (size_t i = 0; i < b.size(); ++i)
    if (!(b[i] > 0 && b[i] < 1)) return "entry " + std::to_string(i) + " is outside (0, 1)";
  return "";
}

std::string at_least_words(int64_t min) {
  std::string words = "must be at least ";
  words += std::to_string(min);
  return words;
}

std::string positive(const double& v) { return v > 0 ? "" : "must be positive"; }
std::string unit_interval(const double& v) {
  return v >= 0 && v < 1 ? "" : "must be in [0, 1)";
}
std::string unit_closed(const double& v) { return v >= 0 && v <= 1 ? "" : "must be in [0, 1]"; }
std::string epochs(const double& v) {
  return v >= 0 && v <= 1e6 ? "" : "must be in [0, 1e6] (0: use steps)";
}

std::optional<double> read_beta(const nlohmann::json& v, const std::string& key) {
  DF_CHECK(v.is_number(), "training config: key '", key, "' must be a number in (0, 1), not ", json_brief(v));
  const double b = v.get<double>();
  DF_CHECK(std::isfinite(b), "training config: key '", key, "' = ", b, " is not a finite number");
  DF_CHECK(b > 0 && b < 1, "training config: key '", key, "' = ", b, " is outside (0, 1) (a beta is the variance "
           "of one step's noise)");
  return b;
}

std::vector<double> read_betas(const nlohmann::json& v, const std::string& key) {
  DF_CHECK(v.is_array(), "training config: key '", key, "' must be an array of numbers in (0, 1), not ",
           json_brief(v));
  std::vector<double> out;
  for (size_t i = 0; i < v.size(); ++i) out.push_back(*read_beta(v[i], key + "[" + std::to_string(i) + "]"));
  return out;
}

}  // namespace field_checks

nlohmann::json TrainConfig::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  const TrainConfig defaults;
  for_each_field([&](const auto& f) {
    const auto& v = this->*f.member;
    if (f.written == Written::always || is_set(v, defaults.*f.member)) j[std::string(f.key)] = json_of(v);
  });
  return j;
}

TrainConfig TrainConfig::from_json(const nlohmann::json& j) {
  DF_CHECK(j.is_object(), "training config: expected a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool known = false;
    for_each_field([&](const auto& f) { known = known || f.key == it.key(); });
    DF_CHECK(known, "training config: unknown key '", it.key(), "'");
  }
  TrainConfig c;
  for_each_field([&](const auto& f) {
    const std::string key(f.key);
    if (!j.contains(key)) return;
    if (f.read) c.*f.member = f.read(j.at(key), key);
    else read_value(j.at(key), key, c.*f.member);
  });
  c.validate();
  return c;
}

void TrainConfig::validate() const {
  const TrainConfig& c = *this;
  for_each_field([&](const auto& f) {
    if (!f.check) return;
    const std::string why = f.check(c.*f.member);
    DF_CHECK(why.empty(), "training config: key '", f.key, "' = ", value_text(c.*f.member), ": ", why);
  });
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
  DF_CHECK(c.t_sampling == TSampling::importance || c.t_sampling_history == TrainConfig{}.t_sampling_history,
           "training config: key 't_sampling_history' goes with t_sampling importance (the loss history of its draws)");
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
  // Super-resolution: the augmentation is the forward process of a fixed DDPM schedule, which
  // vdm's learned one is not; its key goes with super_res.
  if (c.super_res > 0)
    DF_CHECK(objective != Objective::vdm, "training config: super_res with objective vdm (the conditioning "
             "augmentation noises the low-resolution image on a DDPM schedule; use objective eps, x0, v or hybrid)");
  DF_CHECK(c.super_res > 0 || c.super_res_aug == TrainConfig{}.super_res_aug, "training config: key "
           "'super_res_aug' goes with super_res (the low-resolution size of a super-resolution model)");
  // A mirrored image's latent is not the mirrored latent: flipping latents would train on data
  // the autoencoder never produces.
  DF_CHECK(c.autoencoder.empty() || !c.flip, "training config: flip with an autoencoder: the latents are the "
           "encodings of the unflipped images; train without --flip");
  // hybrid's VLB and vdm's bound end in a decoder of 8-bit pixels in [-1, 1] (the discretised
  // Gaussian, VDM's 256-level softmax): a latent is not one.
  DF_CHECK(c.autoencoder.empty() || (objective != Objective::hybrid && objective != Objective::vdm),
           "training config: objective ", enum_name(objective), " with an autoencoder: its likelihood term decodes "
           "8-bit pixels, which latents are not; latent diffusion trains eps, x0 or v");
  DF_CHECK(objective != Objective::vdm || c.loss_weight == LossWeight::none, "training config: loss_weight '",
           enum_name(c.loss_weight),
           "' with objective vdm: the VDM loss is the likelihood bound itself, which a weight would change");
}

nn::UNetConfig TrainConfig::unet_config(int image_size, int channels, int num_classes,
                                        const std::vector<std::string>& class_names) const {
  nlohmann::json j = nn::UNetConfig::preset(preset).to_json();
  j["image_size"] = image_size;
  j["in_channels"] = channels;
  j["out_channels"] = channels;
  j["num_classes"] = class_cond ? num_classes : 0;
  if (model.contains("context_dim") && model.at("context_dim") != 0 && !model.contains("class_names")) {
    DF_CHECK(class_cond, "training config: model key context_dim makes a cross-attention model, which conditions on "
             "the words of the class names: train it with --class-cond");
    DF_CHECK(!class_names.empty(), "training config: model key context_dim: the data set names no classes (a "
             "cross-attention model conditions on their words; give the model key class_names)");
    j["class_names"] = class_names;
  }
  for (auto it = model.begin(); it != model.end(); ++it) {
    DF_CHECK(it.key() != "low_res_channels" && it.key() != "low_res_size", "training config: model key '", it.key(),
             "' is set by super_res (--super-res LOW), not by the model's keys");
    j[it.key()] = it.value();
  }
  if (super_res > 0) {
    // The low-resolution image is the same data, area-averaged down: the same channels.
    j["low_res_channels"] = channels;
    j["low_res_size"] = super_res;
    const int f = super_res > 0 && image_size % super_res == 0 ? image_size / super_res : 0;
    DF_CHECK(super_res < image_size && f > 0 && (f & (f - 1)) == 0, "training config: super_res ", super_res,
             " with ", image_size, "x", image_size, " images: the low resolution must be the image size divided by 2, "
             "4, ... (e.g. --super-res ", image_size / 2, ")");
  }
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
  // The device step regresses one target with a weighted MSE, or trains the hybrid loss (its VLB
  // term in one kernel), with timesteps drawn on the host, uniformly or from the importance
  // sampler's history. Not continuous time and a learned schedule (vdm). It takes labels
  // (class-conditional and cross-attention models), a super-resolution model's conditioning and a
  // latent model's latents, each decided on the host as the cpu step decides it (device_trainer.h).
  if (c.objective == Objective::vdm) return "--objective " + std::string(enum_name(c.objective));
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
