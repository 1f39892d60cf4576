// kernels/learned_variance_vlb.h: launcher of kernels/cuda/learned_variance_vlb.cu (diffuse::cuda
// on the GPU, diffuse::emu under the emulator): the per-sample VLB term of a network with a learned
// variance (improved DDPM; models/diffusion/hybrid_loss.h), and its derivative in the raw variance.
// The cpu reference is diffusion::learned_variance_vlb, which the device form calls this from.
#pragma once

#include <cstdint>
#include <math.h>
#include <utility>

#include "core/hd.h"
#include "core/tensor.h"

namespace diffuse {
// The schedule's constants per step i, as rows of a (T, 6) table of doubles: sqrt(alpha_bar_i),
// sqrt(1 - alpha_bar_i), the posterior mean's coef1 and coef2, log beta_i, and the posterior's
// clipped log variance (diffusion::vlb_constants builds it).
inline constexpr int kLearnedVarianceVlbConstants = 6;
}  // namespace diffuse

namespace diffuse::kernels {

// The discretized Gaussian decoder of one element (Ho et al. 2020 eq. 13; improved DDPM's
// `discretized_gaussian_log_likelihood`, with the exact normal CDF where improved DDPM takes the
// tanh approximation, so the likelihood tests are exact): x in [-1, 1] on the 1/255 grid, the bin
// x -+ 1/255 under N(mean, exp(log_scale)^2), the mass below -1 + 1/255 and above 1 - 1/255 in the
// end bins. The one definition that the cpu (models/diffusion/objective.h) and the VLB kernel
// (kernels/cuda/learned_variance_vlb.cu) evaluate, in double.
struct DecoderTerm {
  double log_p;        // log p(x), p floored at 1e-12 (a NaN stays NaN)
  double dlog_p_dlog;  // d log p / d log_scale (0 where p is floored)
};
DF_HD_INLINE DecoderTerm discretized_gaussian_decoder(double x, double mean, double log_scale) {
  // The edges u = (x - mean -+ 1/255) e^{-log_scale}; du / d log_scale = -u and dQ(u)/du = -phi(u),
  // so an edge's upper tail Q(u) = P(N(0, 1) > u) moves by u phi(u). Q through erfc is accurate in
  // both tails; in the middle bins with lo <= 0 the mass is taken as Q(-hi) - Q(-lo) (the mirrored
  // tails), so every difference is of two small numbers.
  const double inv_std = exp(-log_scale);
  const double hi = inv_std * (x - mean + 1.0 / 255.0), lo = inv_std * (x - mean - 1.0 / 255.0);
  const bool mirror = !(x < -0.999) && !(x > 0.999) && !(lo > 0);
  // The two edges through one loop that is not unrolled: the kernel then holds one inlined double
  // erfc and one exp, not two of each (sm_90 spilled registers with two).
  double q_lo = 0, q_hi = 0, pdf_lo = 0, pdf_hi = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll 1
#endif
  for (int edge = 0; edge < 2; ++edge) {
    const double u = edge == 0 ? lo : hi;
    const double q = 0.5 * erfc((mirror ? -u : u) * 0.70710678118654752440);
    const double pdf = exp(-0.5 * u * u) * 0.39894228040143267794;
    if (edge == 0) q_lo = q, pdf_lo = pdf;
    else q_hi = q, pdf_hi = pdf;
  }
  double p, dp;
  if (x < -0.999) {
    p = 1.0 - q_hi;
    dp = -hi * pdf_hi;
  } else if (x > 0.999) {
    p = q_lo;
    dp = lo * pdf_lo;
  } else {
    p = mirror ? q_hi - q_lo : q_lo - q_hi;
    dp = lo * pdf_lo - hi * pdf_hi;
  }
  return {log(p < 1e-12 ? 1e-12 : p), p < 1e-12 ? 0.0 : dp / p};  // a NaN p stays NaN
}

}  // namespace diffuse::kernels

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

// The Tensor-level op on a GPU (kernels/cuda/learned_variance_vlb.cu; only in a build with the
// CUDA backend). table: the (T, 6) doubles' bits in an i64 tensor of T * 6 elements on the device
// (a GPU tensor holds no f64). steps f32 (B); x0, xt, pred, raw (B, ...) of one shape, f32 or bf16.
// Returns value (B) f32 and dvalue f32 of raw's shape.
namespace diffuse::cuda {
std::pair<Tensor, Tensor> learned_variance_vlb_forward(const Tensor& table, const Tensor& steps, const Tensor& x0,
                                                       const Tensor& xt, const Tensor& pred, const Tensor& raw);
}  // namespace diffuse::cuda
