// models/train/device_sampling.h: `diffuse sample` on a trained UNet through the device sampling
// loop (SamplingLoop, models/diffusion/sampling_loop.h: every step on the device, the whole loop
// captured as a CUDA graph and replayed) where the loop can run the request, with the same
// options, seeds and noise streams as sample() of sampler.h, the host-driven samplers.
//
// What the loop runs: ddpm, ddim and vdm on an unconditional model (labels and guidance need the
// host between steps), a learned variance (objective hybrid) only with ddpm (the others would
// take the first C of the 2C output channels, a copy the loop does not make), the default time
// grid (steps and spacing). Everything else goes to sample(), with the model on the same device.
// The denoiser computes in f32 as make_denoiser does, so on one device both paths give the same
// images up to the rounding of the fused update: bit for bit on the cpu for ddpm and ddim.
#pragma once

#include <functional>
#include <memory>

#include "core/device.h"
#include "core/tensor.h"
#include "models/diffusion/sampler.h"
#include "models/diffusion/sampling_loop.h"
#include "models/nn/unet.h"

namespace diffuse::train {

struct TrainConfig;

// The UNet as a device denoiser (z, t on the GPU, t on DDPM's step scale; see
// SamplingLoopOptions::time_of and unet_time_of): a forward pass without the tape, under bf16
// autocast when bf16, returning f32. Runs the model in whatever mode it is in: eval() for sampling.
diffusion::LoopDenoiser unet_device_denoiser(std::shared_ptr<nn::UNet> unet, bool bf16);
// Sampler time t to the step index a UNet trained on T steps was trained on: t T - 1, in the float
// arithmetic of make_denoiser (trainer.h), so the device and cpu samplers feed the same times.
std::function<float(double)> unet_time_of(int timesteps);

// Whether the device loop runs sampler `kind` for a model trained with cfg, with options o.
bool device_loop_supports(diffusion::SamplerKind kind, const nn::UNetConfig& unet, const TrainConfig& cfg,
                          const diffusion::SamplerOptions& o);

class DeviceSampling {
 public:
  // unet: on `device` (a GPU, or the cpu with graph = false), in eval mode; cfg: its training
  // config (the time scale T).
  DeviceSampling(std::shared_ptr<nn::UNet> unet, const TrainConfig& cfg, Device device, bool graph);
  ~DeviceSampling();
  DeviceSampling(const DeviceSampling&) = delete;
  DeviceSampling& operator=(const DeviceSampling&) = delete;

  // sample(kind, s, make_denoiser(...), o) from the device loop, on the cpu. o must be supported
  // (device_loop_supports); its callback, if any, is called once, after the last step, with
  // undefined tensors. Calls with the same options but for the seed reuse one loop (and its
  // graph); a new shape or other options build a new one.
  Tensor sample(diffusion::SamplerKind kind, const diffusion::Schedule& s, const diffusion::SamplerOptions& o);

 private:
  std::shared_ptr<nn::UNet> unet_;
  int timesteps_;
  Device device_;
  bool graph_;
  std::unique_ptr<diffusion::SamplingLoop> loop_;
  diffusion::SamplerKind kind_ = diffusion::SamplerKind::ddim;
  diffusion::SamplerOptions key_;  // the options loop_ was built for
};

}  // namespace diffuse::train
