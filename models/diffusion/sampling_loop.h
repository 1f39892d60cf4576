// models/diffusion/sampling_loop.h: a DDPM, DDIM or VDM sampling loop that stays on its device:
// on a GPU captured once as a CUDA graph and replayed; on the cpu the same loop with the fused
// step's reference (how the cpu tier checks what a GPU replays).
//
// The samplers of sampler.h run the update on the host between denoiser calls; this loop keeps
// the latent on the device and does each step as the denoiser's kernels plus one fused
// sampler_step launch, updating the latent in place. Everything a step needs is fixed before the
// first one: the plan (grid_plan: times and per-step coefficients, the same numbers sample()
// uses) is uploaded once, the denoiser's time input of each step is a row of a device table, and
// the step noise is drawn in the kernel from Philox (seed, k + 1) with the seed read from a device
// word (seed ^ word). Kernel arguments are therefore the same for every run, so with `graph` the
// whole loop, all steps, is captured at the end of the first run (which runs uncaptured: cuDNN's
// algorithm search and cuBLASLt's heuristics wait for the GPU, which a capture cannot) and each
// later run is: the start latent z_1 = randn(shape, seed, 0) drawn into the loop's buffer, the
// seed word written, one graph launch. Without `graph` the same code launches every kernel; both
// give the same bits. A new shape is a new SamplingLoop.
//
// Noise streams are those of sample(): a seed gives the same z_1 and step noise on the cpu and
// here, so the results agree up to the denoiser's precision. The loop also runs on the cpu
// (device cpu, graph off), with the fused step's reference loop: there it gives sample()'s bits,
// which is how the cpu tier checks the plan, the tables and the streams this loop replays. Steady
// state (from the second run): no host-device synchronisation and no cudaMalloc; with the graph,
// no allocation at all.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "core/device.h"
#include "core/tensor.h"
#include "models/diffusion/sampler.h"
#include "models/diffusion/schedule.h"

namespace diffuse {
class CudaGraph;
class CudaStream;
}  // namespace diffuse

namespace diffuse::diffusion {

// z (B, ...) f32 and t (B) f32 on the GPU, t in the denoiser's time units (time_of below);
// returns the prediction (B, ...) f32 on the same GPU (2C channels with a learned variance). It is
// called with the sampler's stream current and must only queue work there: no host reads of
// device data and no host-to-device copies, or the loop cannot be captured.
using LoopDenoiser = std::function<Tensor(const Tensor& z, const Tensor& t)>;

struct SamplingLoopOptions {
  SamplerKind kind = SamplerKind::ddim;  // ddpm, ddim or vdm
  // shape, steps / spacing / section_counts / timesteps, prediction, clip_x0, variance, eta, seed
  // (the base seed the seed word is relative to). Guidance, labels, z_T and the callback need the
  // host between steps and are refused.
  SamplerOptions sampler;
  // The denoiser's time input for sampler time t; null: float(t). A UNet trained on DDPM's step
  // indices takes t * T - 1 (train::make_denoiser's mapping).
  std::function<float(double)> time_of;
  bool graph = true;                // CUDA only
  Device device = Device::cuda(0);  // or the cpu (graph = false)
};

class SamplingLoop {
 public:
  SamplingLoop(const Schedule& s, LoopDenoiser f, SamplingLoopOptions o);
  ~SamplingLoop();
  SamplingLoop(const SamplingLoop&) = delete;
  SamplingLoop& operator=(const SamplingLoop&) = delete;

  // Samples (B, ...) f32 in data space for `seed`, on the GPU: a view of the loop's own buffer,
  // overwritten by the next run and ordered on the loop's stream (read it with to_host(), or after
  // synchronize()). Nothing here waits for the device.
  const Tensor& run(uint64_t seed);
  Tensor to_host();  // the last run's samples on the cpu (waits for them)
  void synchronize();

  int steps() const { return steps_; }
  bool captured() const;
  void* stream() const;

 private:
  void loop();
  void update(const kernels::SamplerStepParams& p, const Tensor& z, const Tensor& model_out, Tensor& z_next);

  LoopDenoiser f_;
  SamplingLoopOptions o_;
  GridPlan plan_;
  int steps_ = 0;
  int64_t batch_ = 0;
  bool finish_ = false;  // a last pass: divide by alpha(0) and / or clip
  std::unique_ptr<CudaStream> stream_;
  std::unique_ptr<CudaGraph> graph_;
  Tensor z_;        // the latent, updated in place
  Tensor result_;   // z_, or the output of the finishing pass
  Tensor times_;    // (steps, B) f32: the denoiser's time input per step
  Tensor coeffs_;   // (steps + 1, B, 9) f32: SamplerStepCoeffs per step and sample; the last row finishes
  Tensor word_;     // i64 {1}: the seed word
};

}  // namespace diffuse::diffusion
