// models/train/super_res.h: a cascade's super-resolution stage, its conditioning defined once for
// training, the sample grids of a run and `diffuse sample --cascade`.
//
// A super-resolution model (nn::UNetConfig::low_res_channels > 0; SR3, Saharia et al. 2021) sees
// z_t of the full-size image and, concatenated to it, a low-resolution image upsampled by nearest
// neighbour. Conditioning augmentation (Ho et al. 2021, "Cascaded Diffusion Models", CDM, sec. 4.1):
// the low-resolution image z is corrupted by the forward process of the model's own schedule,
//   z_s = alpha_s z + sigma_s eps',   eps' ~ N(0, I),   s in [0, 1] on the schedule's time axis,
// at the low resolution (the space where CDM defines it: the base model's own z_s), and s is an input
// of the network, embedded like t. In training s ~ U[0, super_res_aug] per sample (CDM's
// non-truncated Gaussian augmentation with a random level); at sampling time s is one fixed level
// (`diffuse sample --aug-level`), the base model's sample corrupted to it, so that the model can
// treat the base's errors as part of the noise it was trained to see through (CDM sweeps it; for
// the cascade of docs/training.md the best was 0, kDefaultAugLevel).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "models/diffusion/sampler.h"
#include "models/diffusion/schedule.h"
#include "models/nn/unet.h"
#include "models/train/config.h"

namespace diffuse::train {

// The sampling-time augmentation level that `diffuse sample --cascade` uses unless told: 0, the
// base's samples as they are, which scored best of 0, 0.02, 0.05, 0.1 and 0.2 for the Fashion-MNIST
// cascade of docs/training.md ("Cascades", the measurement), on two seeds.
inline constexpr double kDefaultAugLevel = 0.0;

// The Philox key of the sampling-time augmentation noise of a run sampled with `seed` (at offset
// 0): apart from the sampler's own streams (seed, k).
constexpr uint64_t aug_seed(uint64_t seed) { return seed ^ 0x6175676d656e74ull; }

// z_s of each low-resolution image (B, h, w, C) at its level levels[b] in [0, 1]: alpha(s) z +
// sigma(s) eps' with eps' from Philox (seed, offset) (the fused noising kernel), and the levels as
// the network's input (s T - 1, the map of the timestep). Level 0 leaves the image as it is.
nn::LowRes augment_low_res(const Tensor& low, const std::vector<double>& levels, const diffusion::Schedule& schedule,
                           int timesteps, uint64_t seed, uint64_t offset);

// Step s's conditioning of a super-resolution model on the batch x (B, H, W, C): each image
// area-averaged down by the model's factor, its level drawn from Stream::aug_level (U[0, aug_max])
// and its noise from Stream::aug_noise (train_step.h).
nn::LowRes training_low_res(const Tensor& x, const nn::UNetConfig& unet, const diffusion::Schedule& schedule,
                            int timesteps, double aug_max, uint64_t seed, int64_t step);

// The sampler's view of a super-resolution model conditioned on `low` (make_denoiser's, with the
// conditioning captured): a batch of k B rows (classifier-free guidance doubles it) repeats it k
// times.
diffusion::Denoiser make_sr_denoiser(std::shared_ptr<nn::UNet> unet, int timesteps, Device device, nn::LowRes low,
                                     bool with_variance = false);

// Whether `base` draws what `sr` takes: its image size and channels are the super-resolution
// model's low-resolution input. Throws naming both files and what differs.
void check_cascade(const nn::UNetConfig& base, const nn::UNetConfig& sr, const std::string& base_path,
                   const std::string& sr_path);

// The refusal of a super-resolution model where only an ordinary one can go (`what`: "diffuse
// eval", "the C API", ...), naming the file and the way to sample it.
void refuse_super_res(const nn::UNetConfig& unet, const std::string& path, const std::string& what);

}  // namespace diffuse::train
