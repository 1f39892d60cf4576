// models/train/train_step.h: the decisions of one diffusion training step, defined once for the
// step on the cpu (trainer.cpp) and the step on a GPU (device_train_step.h), which differ only where the
// hardware does: the cpu skips a non-finite step before its update, the GPU's update kernel skips
// it on the device (so a skipped step still counts there; device_trainer.h).
//
// Randomness. Use u of step s (0-based) draws from Philox (seed, kStreamsPerStep * s + u), the
// same numbers on either device (core/philox.h): the batch's timesteps, the noise eps of z_t, the
// dropped labels of classifier-free guidance, the dropout masks (through the UNet's dropout seed),
// and VDM's second noise. A resumed run continues every stream where it stopped.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "models/diffusion/objective.h"
#include "models/train/config.h"
#include "models/train/optim.h"

namespace diffuse::train {

enum class Stream : uint64_t {
  timesteps = 1,
  noise = 2,
  label_drop = 3,
  dropout = 4,
  noise0 = 5,
  aug_level = 6,  // super-resolution: each sample's augmentation level s
  aug_noise = 7,  // super-resolution: the noise eps' of the augmented low-resolution image
};
inline constexpr uint64_t kStreamsPerStep = 8;

// The Philox offset of use `u` at step s.
constexpr uint64_t stream_offset(int64_t step, Stream u) {
  return static_cast<uint64_t>(step) * kStreamsPerStep + static_cast<uint64_t>(u);
}
// The UNet's dropout seed at step s (nn::UNet::set_dropout_seed; its per-call offsets restart).
constexpr uint64_t dropout_seed(uint64_t seed, int64_t step) { return seed ^ stream_offset(step, Stream::dropout); }

// The noise levels of one batch of a discrete objective: each sample's step t, alpha_t =
// sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t) and its loss weight (Min-SNR-gamma, gamma 5,
// or 1).
struct NoiseLevels {
  std::vector<int> t;
  std::vector<double> alpha, sigma, weight;
};
NoiseLevels noise_levels(std::vector<int> t, const std::vector<double>& alphas_cumprod,
                         diffusion::Prediction prediction, LossWeight weight);
// Step s's B timesteps drawn uniformly from [0, T), from stream (seed, s, timesteps).
std::vector<int> uniform_steps(int T, int B, uint64_t seed, int64_t step);

// t_sampling importance's sampler (improved DDPM's: the config's history, 10 by default, mixed with
// 1e-3 of the uniform distribution), or null for uniform steps or a continuous objective.
std::unique_ptr<diffusion::LossSecondMomentResampler> make_t_sampler(const TrainConfig& c);
// Step s's B timesteps and their importance weights 1 / (T p_t): from `sampler` when there is one
// (uniform, weights 1, in its warm-up), from stream (seed, s, timesteps); else uniform_steps with
// no weights (empty).
struct StepDraw {
  std::vector<int> t;
  std::vector<double> importance;
};
StepDraw draw_steps(int T, int B, uint64_t seed, int64_t step, const diffusion::LossSecondMomentResampler* sampler);
// The sampler's loss history as checkpoint entries ("trainer.t_sampler.losses" f64 (T, history),
// "trainer.t_sampler.counts" i64 (T)), and back; a missing or malformed history throws, naming them.
std::vector<std::pair<std::string, Tensor>> t_sampler_state(const diffusion::LossSecondMomentResampler& sampler);
void load_t_sampler_state(diffusion::LossSecondMomentResampler& sampler, const std::map<std::string, Tensor>& ckpt);

// Step s's labels of a class-conditional model with num_classes classes (B of them, i64, on the
// cpu): each replaced by the null class num_classes with probability `dropout` (classifier-free
// guidance), from stream (seed, s, label_drop).
Tensor training_labels(const Tensor& labels, int64_t B, int num_classes, double dropout, uint64_t seed,
                       int64_t step);

// The run's AdamW (weight decay on every parameter; the device step keeps its parameters flat).
AdamWOptions adamw_options(const TrainConfig& c);
// Clipping by the global gradient norm: the norm that gradients are scaled down to, 0 for none.
double max_grad_norm(const TrainConfig& c);
// A step updates the weights, the optimizer and the EMA only when its loss and its gradient norm
// are finite; otherwise it is skipped and counted (TrainConfig::max_nonfinite).
bool step_applied(double loss, double grad_norm);

}  // namespace diffuse::train
