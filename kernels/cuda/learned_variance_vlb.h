// kernels/cuda/learned_variance_vlb.h: launcher of kernels/cuda/learned_variance_vlb.cu (diffuse::cuda
// on the GPU, diffuse::emu under the emulator): the per-sample VLB term of a network with a learned
// variance (improved DDPM; models/diffusion/hybrid_loss.h), and its derivative in the raw variance.
// The cpu reference is diffusion::learned_variance_vlb, which the device form calls this from.
#pragma once

#include <cstdint>
#include <utility>

#include "core/tensor.h"

namespace diffuse {
// The schedule's constants per step i, as rows of a (T, 6) table of doubles: sqrt(alpha_bar_i),
// sqrt(1 - alpha_bar_i), the posterior mean's coef1 and coef2, log beta_i, and the posterior's
// clipped log variance (diffusion::vlb_constants builds it).
inline constexpr int kLearnedVarianceVlbConstants = 6;
}  // namespace diffuse

#define DIFFUSE_LEARNED_VARIANCE_VLB_LAUNCHERS                                                            \
  /* B = batch samples of n elements each. steps (B) the 0-based step of each sample (as f32, the   \
     UNet's time input); x0, xt, pred (the eps prediction, a constant), raw (B n) f32; value (B) f32 \
     the term in bits per dim; dvalue (B n) f32 d value_b / d raw. table (T, 6) doubles. */          \
  void learned_variance_vlb_forward(const double* table, int T, const float* steps, const float* x0,      \
                                    const float* xt, const float* pred, const float* raw, float* value,   \
                                    float* dvalue, int64_t batch, int64_t n, void* stream);

namespace diffuse {
namespace cuda { DIFFUSE_LEARNED_VARIANCE_VLB_LAUNCHERS }
namespace emu { DIFFUSE_LEARNED_VARIANCE_VLB_LAUNCHERS }
}  // namespace diffuse

// The Tensor-level op on a GPU (kernels/cuda/learned_variance_vlb_cuda.cpp; only in a build with the
// CUDA backend). table: the (T, 6) doubles' bits in an i64 tensor of T * 6 elements on the device
// (a GPU tensor holds no f64). steps f32 (B); x0, xt, pred, raw (B, ...) of one shape, f32 or bf16.
// Returns value (B) f32 and dvalue f32 of raw's shape.
namespace diffuse::cuda {
std::pair<Tensor, Tensor> learned_variance_vlb_forward(const Tensor& table, const Tensor& steps, const Tensor& x0,
                                                       const Tensor& xt, const Tensor& pred, const Tensor& raw);
}  // namespace diffuse::cuda
