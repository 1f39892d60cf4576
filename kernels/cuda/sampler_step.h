// kernels/cuda/sampler_step.h: launcher of kernels/cuda/sampler_step.cu, the fused sampler step
// of kernels/sampler_step.h (diffuse::cuda on the GPU, diffuse::emu under the emulator).
#pragma once

#include <cstdint>

#include "core/tensor.h"
#include "kernels/sampler_step.h"

#define DIFFUSE_SAMPLER_STEP_LAUNCHERS                                                                 \
  /* The update of kernels/sampler_step.h, element for element what sampler_step_cpu computes, with \
     the same Philox noise. Every pointer, including p.coeffs (batch entries), p.aux, p.eps_shift    \
     and p.x0_out, is device memory (host memory under the emulator). z_next may alias z. */         \
  void sampler_step(const kernels::SamplerStepParams& p, const float* z, const float* model_out,      \
                    const float* model_out_uncond, float* z_next, int64_t n_per_sample, int batch, void* stream);

namespace diffuse {
namespace cuda { DIFFUSE_SAMPLER_STEP_LAUNCHERS }
namespace emu { DIFFUSE_SAMPLER_STEP_LAUNCHERS }
}  // namespace diffuse

// The Tensor-level op on a GPU, which kernels/sampler_step.cpp calls for a tensor on a CUDA device
// (kernels/cuda/sampler_step_cuda.cpp; only in a build with the CUDA backend).
// z, model_out (and the optional ones) f32 on one GPU; p.coeffs, p.aux, p.eps_shift, p.x0_out and
// p.seed_xor must already be device pointers.
namespace diffuse::cuda {
void sampler_step(const kernels::SamplerStepParams& p, const Tensor& z, const Tensor& model_out,
                  const Tensor& model_out_uncond, Tensor& z_next);
}  // namespace diffuse::cuda
