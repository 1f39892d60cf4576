// models/train/super_res.cpp: a super-resolution model's conditioning (super_res.h). B batch, h w
// the low resolution, C channels.
#include "models/train/super_res.h"

#include <cmath>
#include <utility>

#include "autograd/tape.h"
#include "core/check.h"
#include "core/philox.h"
#include "kernels/noise.h"
#include "models/train/train_step.h"
#include "models/train/trainer.h"

namespace diffuse::train {

nn::LowRes augment_low_res(const Tensor& low, const std::vector<double>& levels, const diffusion::Schedule& schedule,
                           int timesteps, uint64_t seed, uint64_t offset) {
  DF_CHECK(low.dim() == 4 && low.dtype() == DType::f32, "augment_low_res: expected a (B, h, w, C) f32 image, got ",
           low.str());
  const int64_t B = low.size(0);
  DF_CHECK(static_cast<int64_t>(levels.size()) == B, "augment_low_res: ", levels.size(), " levels for ", B, " images");
  std::vector<float> alpha(B), sigma(B), input(B);
  for (int64_t b = 0; b < B; ++b) {
    const double s = levels[b];
    DF_CHECK(std::isfinite(s) && s >= 0 && s <= 1, "augment level ", s, " outside [0, 1]");
    // At s = 0 the schedule's gamma is -inf: alpha 1, sigma 0, the image as it is.
    alpha[b] = static_cast<float>(s > 0 ? schedule.alpha(s) : 1.0);
    sigma[b] = static_cast<float>(s > 0 ? schedule.sigma(s) : 0.0);
    input[b] = static_cast<float>(s * timesteps - 1.0);  // make_denoiser's map of t
  }
  const Device d = low.device();
  Tensor z = Tensor::empty(low.shape(), DType::f32, d), eps = Tensor::empty(low.shape(), DType::f32, d);
  kernels::noise_forward(low, Tensor::from_vector(alpha, {B}, d), Tensor::from_vector(sigma, {B}, d), seed, offset, z,
                         eps);
  return nn::LowRes{ag::Var(z), Tensor::from_vector(input, {B}, d)};
}

nn::LowRes training_low_res(const Tensor& x, const nn::UNetConfig& unet, const diffusion::Schedule& schedule,
                            int timesteps, double aug_max, uint64_t seed, int64_t step) {
  DF_CHECK(unet.super_res(), "training_low_res: not a super-resolution model");
  const int64_t B = x.size(0);
  const Tensor low = nn::area_downsample(x, unet.low_res_factor());
  std::vector<double> levels(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b)
    levels[b] = aug_max * philox_uniform(seed, stream_offset(step, Stream::aug_level), static_cast<uint64_t>(b));
  return augment_low_res(low, levels, schedule, timesteps, seed, stream_offset(step, Stream::aug_noise));
}

diffusion::Denoiser make_sr_denoiser(std::shared_ptr<nn::UNet> unet, int timesteps, Device device, nn::LowRes low,
                                     bool with_variance) {
  const nn::UNetConfig& c = unet->config();
  DF_CHECK(c.super_res(), "make_sr_denoiser: the UNet is not a super-resolution model");
  DF_CHECK(low.defined() && low.level.defined(), "make_sr_denoiser: no low-resolution conditioning");
  return make_denoiser(std::move(unet), timesteps, device, with_variance, low);
}

void check_cascade(const nn::UNetConfig& base, const nn::UNetConfig& sr, const std::string& base_path,
                   const std::string& sr_path) {
  DF_CHECK(!base.super_res(), base_path, " is a super-resolution model (", base.low_res_size, "x", base.low_res_size,
           " -> ", base.image_size, "x", base.image_size, "); the cascade's first checkpoint must be an ordinary "
           "(base) model: diffuse sample --cascade BASE SR");
  DF_CHECK(sr.super_res(), sr_path, " is not a super-resolution model (train one with --super-res); the cascade's "
           "second checkpoint upsamples the first's samples: diffuse sample --cascade BASE SR");
  DF_CHECK(base.image_size == sr.low_res_size && base.in_channels == sr.low_res_channels, "cascade: ", base_path,
           " draws ", base.image_size, "x", base.image_size, "x", base.in_channels, " images but ", sr_path,
           " upsamples ", sr.low_res_size, "x", sr.low_res_size, "x", sr.low_res_channels,
           " ones; train the base at the super-resolution model's low resolution (e.g. --dataset fashion-mnist@",
           sr.low_res_size, ")");
}

void refuse_super_res(const nn::UNetConfig& unet, const std::string& path, const std::string& what) {
  DF_CHECK(!unet.super_res(), path, " is a super-resolution model (", unet.low_res_size, "x", unet.low_res_size,
           " -> ", unet.image_size, "x", unet.image_size, "), which needs a low-resolution image to condition on; ",
           what, " takes ordinary models. Sample it in a cascade: diffuse sample --cascade BASE.safetensors ", path);
}

}  // namespace diffuse::train
