// models/train/config.h: a training run's configuration, and the decisions that follow from it.
//
// TrainConfig is what `diffuse train` is asked for (flags or a config file) and what a checkpoint
// records; the functions below are the one place each consequence of it is decided (the betas,
// what the network predicts, the ancestral variance, continuous time, the device), for the cpu
// and the device training step, sampling, eval and the C API alike.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/device.h"
#include "core/enum_names.h"
#include "models/diffusion/sampler.h"
#include "models/diffusion/schedule.h"
#include "models/nn/snr_net.h"
#include "models/nn/unet.h"

namespace diffuse::train {

// The enumerated keys of a training config. TrainConfig holds them as these enums; the tables are
// their one spelling: what the checkpoint's metadata writes, what a flag or a config file is
// parsed by, and what --help lists.
enum class Objective { eps, x0, v, hybrid, vdm };
inline constexpr EnumName<Objective> kObjectiveNames[] = {{Objective::eps, "eps"},
                                                          {Objective::x0, "x0"},
                                                          {Objective::v, "v"},
                                                          {Objective::hybrid, "hybrid"},
                                                          {Objective::vdm, "vdm"}};
constexpr std::span<const EnumName<Objective>> enum_table(Objective) { return kObjectiveNames; }

// linear, scaled_linear, cosine, custom: DDPM betas (objectives eps, x0, v, hybrid); linear,
// learned: objective vdm.
enum class ScheduleKind { linear, scaled_linear, cosine, custom, learned };
inline constexpr EnumName<ScheduleKind> kScheduleNames[] = {
    {ScheduleKind::linear, "linear"}, {ScheduleKind::scaled_linear, "scaled_linear"},
    {ScheduleKind::cosine, "cosine"}, {ScheduleKind::custom, "custom"}, {ScheduleKind::learned, "learned"}};
constexpr std::span<const EnumName<ScheduleKind>> enum_table(ScheduleKind) { return kScheduleNames; }

enum class LossWeight { none, min_snr };
inline constexpr EnumName<LossWeight> kLossWeightNames[] = {{LossWeight::none, "none"},
                                                            {LossWeight::min_snr, "min-snr"}};
constexpr std::span<const EnumName<LossWeight>> enum_table(LossWeight) { return kLossWeightNames; }
enum class LrSchedule { constant, cosine };
inline constexpr EnumName<LrSchedule> kLrScheduleNames[] = {{LrSchedule::constant, "constant"},
                                                            {LrSchedule::cosine, "cosine"}};
constexpr std::span<const EnumName<LrSchedule>> enum_table(LrSchedule) { return kLrScheduleNames; }

// How a discrete objective draws its training steps t: uniform, or importance (improved DDPM's
// loss-aware sampler, Nichol & Dhariwal 2021 sec. 3.3: p_t proportional to sqrt(E[L_t^2]) over
// each t's last 10 losses, uniform until every t has 10, the loss reweighted by 1 / (T p_t)).
enum class TSampling { uniform, importance };
inline constexpr EnumName<TSampling> kTSamplingNames[] = {{TSampling::uniform, "uniform"},
                                                          {TSampling::importance, "importance"}};
constexpr std::span<const EnumName<TSampling>> enum_table(TSampling) { return kTSamplingNames; }

// A device spec: "cpu", "cuda", "cuda:N" or "auto". Checks the spelling only (no GPU is asked),
// so a stored config names its device on any machine; resolve_device decides what it means here.
// Throws naming the spec and the valid forms, after `where` ("training config") when given.
void check_device_spec(std::string_view spec, std::string_view where = {});

struct TrainConfig {
  // model
  std::string preset = "tiny";
  nlohmann::json model = nlohmann::json::object();  // UNetConfig keys overriding the preset
  // diffusion
  // eps | x0 | v | hybrid (eps + learned variance, improved DDPM) | vdm (continuous-time VDM bound,
  // eps prediction; Kingma et al. 2021)
  Objective objective = Objective::eps;
  // eps, x0, v, hybrid: DDPM betas, linear | scaled_linear (linear in sqrt(beta), latent
  // diffusion's) | cosine (improved DDPM) | custom (the list `betas`). vdm: linear (VDM's fixed
  // linear log-SNR, gamma from kVdmGammaMin to kVdmGammaMax) | learned (the SNRNet, trained
  // jointly; `diffuse train --objective vdm` picks it unless --schedule is given).
  ScheduleKind schedule = ScheduleKind::linear;
  // Discrete objectives: T. vdm: time stays continuous; T only scales the network's time input,
  // t in [0, 1] -> t T - 1, the map make_denoiser applies for every sampler.
  int timesteps = 1000;
  // linear and scaled_linear: the first and last beta, as they are (not scaled by T), each in
  // (0, 1). Unset: DDPM's 1e-4 and 0.02 scaled by 1000 / T (improved DDPM's rule, so any T spans
  // the same total noise), and then linear caps each beta at 0.999. Written only when set.
  std::optional<double> beta_start, beta_end;
  // custom: the T betas, each in (0, 1) (an imported diffusers model's trained_betas). Written
  // only when not empty.
  std::vector<double> betas;
  // DDPM ancestral sampling's variance for objectives eps, x0 and v (ancestral_variance):
  // beta_tilde, the posterior's (diffusers' fixed_small), or beta (fixed_large; Ho et al. 2020
  // sec. 3.2 found the two to give similar samples). Objective hybrid learns its own. Written
  // only when not beta_tilde.
  diffusion::VarianceKind variance = diffusion::VarianceKind::beta_tilde;
  LossWeight loss_weight = LossWeight::none;  // none | min-snr (gamma 5)
  // uniform | importance (objective hybrid only: its loss has a VLB term over discrete t). The
  // sampler's loss history is saved in the checkpoint. Written only when not uniform.
  TSampling t_sampling = TSampling::uniform;
  // t_sampling importance: the losses kept per step, and so the uniform warm-up (until every step
  // has this many). Improved DDPM's 10; fewer only to reach the importance draws sooner (tests).
  // Written only when not 10.
  int t_sampling_history = 10;
  // optimisation
  double lr = 2e-4, beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8, weight_decay = 0.0;
  int64_t warmup = 100;
  // After the warm-up: constant, or cosine (a half cosine from lr down to 0 at the run's last
  // step; a resumed run with more steps stretches it from there). Written only when not constant.
  LrSchedule lr_schedule = LrSchedule::constant;
  double grad_clip = 1.0;          // 0: off
  double ema_decay = 0.999;
  bool ema_warmup = true;
  int batch = 64;
  int64_t steps = 2000;
  double epochs = 0;               // > 0: train ceil(epochs * images / batch) steps instead of `steps`
  // conditioning
  bool class_cond = false;
  double label_dropout = 0.1;      // classifier-free guidance: share of labels replaced by null
  // Super-resolution (super_res.h): > 0 trains a cascade's second stage, conditioned on each image
  // area-averaged down to super_res x super_res (the image size divided by a power of two),
  // augmented to level s ~ U[0, super_res_aug] on the model's schedule (Ho et al. 2021, CDM sec.
  // 4.1), upsampled and concatenated to z_t. Both written only when set.
  int super_res = 0;
  double super_res_aug = 0.2;
  // data
  std::string dataset = "fashion-mnist";  // fashion-mnist | mnist:<dir> | cifar10:<dir> | images:<dir>
  bool flip = false;
  // Latent diffusion (Rombach et al. 2022): an autoencoder checkpoint of `diffuse
  // train-autoencoder`. Each batch is encoded to its posterior means, scaled to unit variance by a
  // factor measured on the data (LDM's scale_factor), and the UNet is trained on those latents;
  // the checkpoint stores the autoencoder and the factor, so sampling decodes without this file.
  // Written only when set.
  std::string autoencoder;
  // run
  uint64_t seed = 0;
  std::string device = "auto";
  bool bf16 = true;                // CUDA activations in bf16 (the cpu computes in f32)
  bool cuda_graph = true;          // on a GPU: the step captured as a CUDA graph and replayed
  std::string out_dir = "runs/diffuse";
  int64_t log_every = 10;
  int64_t sample_every = 500;      // 0: only at the end
  int64_t checkpoint_every = 500;  // 0: only at the end
  int sample_count = 64;
  int sample_steps = 50;
  int64_t max_nonfinite = 10;      // consecutive non-finite steps before the run stops

  // The fields, their JSON, their flags and their checks are listed once, in config_fields.h.
  nlohmann::json to_json() const;
  // Unknown keys are an error; each refusal names its key. Validates the result.
  static TrainConfig from_json(const nlohmann::json& j);
  // Each field's own requirement (config_fields.h), then those across fields (a schedule with its
  // objective, the betas with the schedule, ...); throws naming the key.
  void validate() const;
  // The model the run trains: the preset, the data's image size, channels and classes, then the
  // `model` keys. A cross-attention model (model key context_dim) takes the data set's class names
  // (and their words as its vocabulary) unless the model keys give class_names.
  nn::UNetConfig unet_config(int image_size, int channels, int num_classes,
                             const std::vector<std::string>& class_names = {}) const;
};

// Which device a training run uses, decided from the requested spec, whether a GPU answers, and
// what the config asks of the step. "auto" with a GPU takes the GPU unless the config needs what
// only the cpu trainer does (device_step_unsupported), and then the cpu, with `note` saying so in
// one line; an explicit cuda device refuses such a config, naming the option.
struct TrainingDevice {
  Device device;
  std::string note;  // non-empty when "auto" passed a GPU over
};
TrainingDevice choose_training_device(const TrainConfig& cfg, bool cuda_available);
// What of `cfg` the GPU training step cannot do yet, as the flag or key a person gave
// ("--class-cond", "--objective hybrid", ...), or "" when it can do all of it.
std::string device_step_unsupported(const TrainConfig& cfg);

// The DDPM schedule of a discrete objective (eps, x0, v, hybrid): the one place a config's
// schedule, timesteps, beta_start / beta_end and betas become betas, for training (the cpu and the
// device step), sampling, eval and the C API. Throws for vdm, whose schedule is continuous
// (model_schedule).
diffusion::DiscreteSchedule make_schedule(const TrainConfig& c);
// DDPM's linear betas at T = 1000 (Ho et al. 2020, sec. 4), the default ends of linear and
// scaled_linear, scaled by 1000 / T.
inline constexpr double kDdpmBetaStart = 1e-4, kDdpmBetaEnd = 0.02;
// The first and last beta of a linear or scaled_linear schedule: beta_start and beta_end where
// set, else kDdpmBetaStart and kDdpmBetaEnd times 1000 / T.
std::pair<double, double> beta_range(const TrainConfig& c);
// VDM's ends of the log-SNR schedule (their config: gamma_min -13.3, gamma_max 5), the fixed
// linear schedule's and the learned schedule's starting point.
inline constexpr double kVdmGammaMin = -13.3, kVdmGammaMax = 5.0;
// Objective vdm: continuous time, the VDM bound as the loss.
bool continuous_time(const TrainConfig& c);
// A fresh SNRNet for objective vdm with schedule learned (1024 features, as VDM), initialised from
// the run's seed; nullptr otherwise.
std::shared_ptr<nn::SNRNet> make_snr_net(const TrainConfig& c);
// What the first C output channels predict (hybrid: eps).
diffusion::Prediction prediction_of(const TrainConfig& c);
diffusion::Prediction prediction_of(Objective o);
// The variance of DDPM ancestral steps (and of the VLB's reverse process) with this model: learned
// for objective hybrid, else the config's `variance` (beta_tilde or beta).
diffusion::VarianceKind ancestral_variance(const TrainConfig& c);
// Whether the network also outputs the variance channels (objective hybrid).
bool learned_variance(const TrainConfig& c);

}  // namespace diffuse::train
