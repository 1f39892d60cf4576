// models/train/config_fields.h: the training config's fields, listed once.
//
// Each field of TrainConfig is one entry below: its key, its member, its help text, when it is
// written, how it is given on the command line, and what a value of its own must satisfy. From
// this one list come TrainConfig::to_json and from_json (models/train/config.cpp), the flags of
// `diffuse train` with their --help (tools/cmd_train.cpp), and the per-field half of
// TrainConfig::validate; the default is the member's initialiser in config.h. What depends on
// several fields at once (a schedule with its objective, the betas with the schedule) is checked
// by validate after them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "models/train/config.h"

namespace diffuse::train {

// How a field is given to `diffuse train`.
enum class FlagKind {
  value,   // --key VALUE (an enumeration's names, listed in --help; a bool as true or false)
  toggle,  // --key alone sets a bool
  on_off,  // --key on | off, a bool
  json,    // --key '{...}': JSON text
  none,    // the config file only
};

// When to_json writes a field: always, or only when it is set (an optional with a value, a list
// that is not empty, a value other than the default), so a config that does not use it reads and
// writes as it did before the field existed.
enum class Written { always, when_set };

// A value's own requirement: "" when `v` satisfies it, else what is wrong, in words that follow the
// key and the value ("must be at least 2"; "unknown preset 'huge' (expected ...)").
// from_json runs it on every checkpoint it reads, so a check added later must still accept what
// an older checkpoint can hold (a negative grad_clip or checkpoint_every meant "off" and stays
// accepted); log_every >= 1 is checked because train() divides by it.
template <class T>
using FieldCheck = std::string (*)(const T& v);
// The values a field takes, as --help lists them, for a string field whose check accepts a fixed
// set (an enumeration's field lists its names without one).
using FieldValues = std::vector<std::string> (*)();
// A field's own reader of its JSON value, where the generic one (json_to: the JSON type and the
// C++ range of T) is not enough; throws naming the key.
template <class T>
using FieldRead = T (*)(const nlohmann::json& v, const std::string& key);

template <class T>
struct Field {
  std::string_view key;     // the JSON key; the flag is "--" + key with '-' for '_', unless `flag`
  T TrainConfig::*member;
  std::string_view help;    // --help and docs/training.md
  FieldCheck<T> check = nullptr;
  FieldValues values = nullptr;
  Written written = Written::always;
  FlagKind flag_kind = FlagKind::value;
  std::string_view flag = {};  // the flag where it differs from the key's ("--out" for out_dir)
  FieldRead<T> read = nullptr;

  std::string flag_name() const {
    if (!flag.empty()) return std::string(flag);
    std::string f = "--" + std::string(key);
    for (char& c : f)
      if (c == '_') c = '-';
    return f;
  }
};

namespace field_checks {
std::string preset(const std::string& p);
std::string device(const std::string& d);
std::vector<std::string> device_forms();  // cpu, cuda, cuda:N, auto: the spellings device() accepts
std::string model(const nlohmann::json& m);
std::string beta(const std::optional<double>& b);
std::string betas(const std::vector<double>& b);
std::string at_least_words(int64_t min);  // "must be at least <min>"
template <auto Min>
std::string at_least(const decltype(Min)& v) {
  return v >= Min ? std::string() : at_least_words(static_cast<int64_t>(Min));
}
std::string positive(const double& v);
std::string unit_interval(const double& v);  // [0, 1)
std::string unit_closed(const double& v);    // [0, 1]
std::string epochs(const double& v);         // [0, 1e6]
// A beta (beta_start, beta_end, an entry of betas): a finite number in (0, 1).
std::optional<double> read_beta(const nlohmann::json& v, const std::string& key);
std::vector<double> read_betas(const nlohmann::json& v, const std::string& key);
}  // namespace field_checks

// Calls v(Field<T>{.key = ...}) for every field of TrainConfig, in the order --help lists them.
template <class V>
void for_each_field(V&& v) {
  namespace fc = field_checks;
  using C = TrainConfig;
  // model
  v(Field<std::string>{.key = "preset", .member = &C::preset, .help = "UNet preset: tiny (CPU), fmnist (GPU, 28x28), ddpm-cifar10, imagenet64, latent (7x7x4 latents, with --autoencoder)", .check = fc::preset, .values = &nn::UNetConfig::preset_names});
  v(Field<nlohmann::json>{.key = "model", .member = &C::model, .help = "JSON object of UNet keys overriding the preset, e.g. '{\"base_channels\": 48}'", .check = fc::model, .flag_kind = FlagKind::json});
  // diffusion
  v(Field<Objective>{.key = "objective", .member = &C::objective, .help = "what the network predicts: eps, x0, v, hybrid (eps plus a learned variance, trained with L_simple + 0.001 L_vlb as improved DDPM; 2x the output channels), or vdm (eps in continuous time, trained on the VDM likelihood bound in bits/dim: prior + reconstruction + 0.5 gamma'(t) ||eps - eps_hat||^2; Kingma et al. 2021)"});
  v(Field<ScheduleKind>{.key = "schedule", .member = &C::schedule, .help = "noise schedule: linear (DDPM betas), scaled_linear (linear in sqrt(beta), latent diffusion's), cosine (improved DDPM) or custom (the config file's list `betas`, one per step); with --objective vdm: learned (the default there: a monotone SNR network trained with the model, saved as snr.*) or linear (VDM's fixed linear log-SNR, -13.3 to 5)"});
  v(Field<int>{.key = "timesteps", .member = &C::timesteps, .help = "diffusion steps T", .check = fc::at_least<2>});
  v(Field<std::optional<double>>{.key = "beta_start", .member = &C::beta_start, .help = "first beta of a linear or scaled_linear schedule, in (0, 1), as given (default: DDPM's 1e-4 x 1000 / T)", .check = fc::beta, .written = Written::when_set, .read = fc::read_beta});
  v(Field<std::optional<double>>{.key = "beta_end", .member = &C::beta_end, .help = "last beta of a linear or scaled_linear schedule, in (0, 1), as given (default: DDPM's 0.02 x 1000 / T)", .check = fc::beta, .written = Written::when_set, .read = fc::read_beta});
  v(Field<std::vector<double>>{.key = "betas", .member = &C::betas, .help = "schedule custom: the T betas, each in (0, 1)", .check = fc::betas, .written = Written::when_set, .flag_kind = FlagKind::none, .read = fc::read_betas});
  v(Field<diffusion::VarianceKind>{.key = "variance", .member = &C::variance, .help = "the variance of DDPM ancestral steps (sampler ddpm and pc, and the likelihood bound) for objectives eps, x0 and v: beta_tilde (the posterior's, diffusers' fixed_small) or beta (fixed_large); hybrid learns its own", .written = Written::when_set});
  v(Field<LossWeight>{.key = "loss_weight", .member = &C::loss_weight, .help = "per-sample loss weight: none or min-snr (gamma 5)"});
  v(Field<TSampling>{.key = "t_sampling", .member = &C::t_sampling, .help = "how training steps t are drawn: uniform, or importance (--objective hybrid only; improved DDPM's sampler: p_t proportional to sqrt(E[L_t^2]) over each step's last t_sampling_history losses, uniform until every step has that many, the loss weighted by 1/(T p_t); the history is saved in the checkpoint)", .written = Written::when_set});
  v(Field<int>{.key = "t_sampling_history", .member = &C::t_sampling_history, .help = "--t-sampling importance: the losses kept per step t, so the uniform warm-up lasts until every step has this many (improved DDPM's 10)", .check = fc::at_least<1>, .written = Written::when_set});
  // optimisation
  v(Field<double>{.key = "lr", .member = &C::lr, .help = "AdamW learning rate", .check = fc::positive});
  v(Field<double>{.key = "beta1", .member = &C::beta1, .help = "AdamW beta1"});
  v(Field<double>{.key = "beta2", .member = &C::beta2, .help = "AdamW beta2"});
  v(Field<double>{.key = "adam_eps", .member = &C::adam_eps, .help = "AdamW epsilon"});
  v(Field<double>{.key = "weight_decay", .member = &C::weight_decay, .help = "AdamW decoupled weight decay"});
  v(Field<int64_t>{.key = "warmup", .member = &C::warmup, .help = "learning-rate warm-up steps"});
  v(Field<LrSchedule>{.key = "lr_schedule", .member = &C::lr_schedule, .help = "the learning rate after the warm-up: constant, or cosine (a half cosine from --lr down to 0 at the last of --steps)", .written = Written::when_set});
  v(Field<double>{.key = "grad_clip", .member = &C::grad_clip, .help = "clip gradients to this global norm (0: off)"});
  v(Field<double>{.key = "ema_decay", .member = &C::ema_decay, .help = "EMA decay of the weights used for sampling", .check = fc::unit_interval});
  v(Field<bool>{.key = "ema_warmup", .member = &C::ema_warmup, .help = "EMA decay warm-up min(decay, (1+n)/(10+n))"});
  v(Field<int>{.key = "batch", .member = &C::batch, .help = "batch size", .check = fc::at_least<1>});
  v(Field<int64_t>{.key = "steps", .member = &C::steps, .help = "training steps in all (a resumed run continues to this count)", .check = fc::at_least<int64_t{1}>});
  v(Field<double>{.key = "epochs", .member = &C::epochs, .help = "train for this many passes over the dataset instead of --steps (0: use --steps)", .check = fc::epochs});
  // conditioning
  v(Field<bool>{.key = "class_cond", .member = &C::class_cond, .help = "condition on class labels (with label dropout for classifier-free guidance); with images:<dir>, each image's label is its class sub-folder", .flag_kind = FlagKind::toggle});
  v(Field<double>{.key = "label_dropout", .member = &C::label_dropout, .help = "share of labels replaced by the null class", .check = fc::unit_interval});
  v(Field<int>{.key = "super_res", .member = &C::super_res, .help = "train a super-resolution model (a cascade's second stage) conditioned on each image area-averaged down to this size (the image size divided by 2, 4, ...), noise-augmented, upsampled by nearest neighbour and concatenated to z_t (0: off)", .check = fc::at_least<0>, .written = Written::when_set});
  v(Field<double>{.key = "super_res_aug", .member = &C::super_res_aug, .help = "with --super-res: the largest augmentation level; each low-resolution image is noised to z_s = alpha_s low + sigma_s eps' at s ~ U[0, this] on the model's schedule (time axis [0, 1]; 0: no augmentation), and s is an input of the model (CDM's conditioning augmentation)", .check = fc::unit_closed, .written = Written::when_set});
  // data
  v(Field<std::string>{.key = "dataset", .member = &C::dataset, .help = "fashion-mnist[:<dir>], mnist:<dir>, cifar10:<dir>, images:<dir>[@size] (resized to size x size, default 64), or idx:<images>,<labels>; the fixed-size sets also take @size, area-averaged to their size divided by a power of two (fashion-mnist@14)"});
  v(Field<bool>{.key = "flip", .member = &C::flip, .help = "random horizontal flips", .flag_kind = FlagKind::toggle});
  v(Field<std::string>{.key = "autoencoder", .member = &C::autoencoder, .help = "latent diffusion: an autoencoder.safetensors of `diffuse train-autoencoder`; the UNet is trained on the data set's latents (posterior means scaled to unit variance by a factor measured on them), the checkpoint keeps the autoencoder and the factor, and `diffuse sample` decodes its samples. Pick a preset whose levels fit the latent size (--preset latent for 7x7 latents)", .written = Written::when_set});
  // run
  v(Field<uint64_t>{.key = "seed", .member = &C::seed, .help = "seed of every random draw (init, batches, noise)"});
  v(Field<std::string>{.key = "device", .member = &C::device, .help = "cpu, cuda, cuda:N or auto (a GPU where one answers; what the GPU step cannot do yet, objective vdm, then trains on the cpu, saying so)", .check = fc::device, .values = fc::device_forms});
  v(Field<bool>{.key = "bf16", .member = &C::bf16, .help = "bf16 activations on CUDA"});
  v(Field<bool>{.key = "cuda_graph", .member = &C::cuda_graph, .help = "on a GPU (where the whole step runs on the device: objectives eps, x0 and v): on captures the step as a CUDA graph once and replays it, off launches its kernels one by one (the same bits, slower)", .flag_kind = FlagKind::on_off});
  v(Field<std::string>{.key = "out_dir", .member = &C::out_dir, .help = "output folder (checkpoint.safetensors, log.csv, samples_*.png)", .flag = "--out"});
  v(Field<int64_t>{.key = "log_every", .member = &C::log_every, .help = "steps between CSV log rows", .check = fc::at_least<int64_t{1}>});
  v(Field<int64_t>{.key = "sample_every", .member = &C::sample_every, .help = "steps between PNG grids of EMA samples (0: only at the end)"});
  v(Field<int64_t>{.key = "checkpoint_every", .member = &C::checkpoint_every, .help = "steps between checkpoints (0: only at the end)"});
  v(Field<int>{.key = "sample_count", .member = &C::sample_count, .help = "images in each grid", .check = fc::at_least<1>});
  v(Field<int>{.key = "sample_steps", .member = &C::sample_steps, .help = "DDIM steps for the grids", .check = fc::at_least<1>});
  v(Field<int64_t>{.key = "max_nonfinite", .member = &C::max_nonfinite, .help = "consecutive non-finite steps before the run stops"});
}

}  // namespace diffuse::train
