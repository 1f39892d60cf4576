// kernels/group_norm.h: GroupNorm (Wu & He 2018) over channel groups, with the adaptive
// scale/shift of ADM's AdaGN (Dhariwal & Nichol 2021, sec. 3; improved-DDPM `ResBlock`
// `use_scale_shift_norm`) and an optional fused SiLU, forward and backward.
//
// Shapes: x (B, ..., C) channels last (NHWC images, (B,T,C) tokens or (B,C)); N = numel / (B*C)
// positions per sample; G groups of Cg = C / G channels. gamma, beta (C) or undefined (1 and 0);
// scale, shift (B, C) or undefined. Per (b, g) over the N*Cg elements of the group:
//   xhat = (x - mean) * rstd,  rstd = 1 / sqrt(var + eps)   (biased variance, as PyTorch)
//   z    = xhat * gamma + beta                                (without scale/shift)
//   z    = (xhat * gamma + beta) * (1 + scale) + shift        (with scale/shift)
//   y    = silu ? z * sigmoid(z) : z
// Dtypes: f32 or f64, shared by every input; mean and rstd (B, G) have x's dtype (f32 for f32
// inputs: the statistics are accumulated in double and stored in f32).
#pragma once

#include "core/tensor.h"

namespace diffuse::kernels {

struct GroupNormOptions {
  int groups = 32;
  float eps = 1e-5f;
  bool silu = false;
};

// Forward returns what backward needs: the per-(b, g) mean and rstd. The pre-activation z is
// recomputed in backward from x and the statistics (one FMA per element), not saved.
struct GroupNormResult {
  Tensor y;            // x's shape
  Tensor mean, rstd;   // (B, G)
};

// Gradients; each is undefined when the matching input was undefined.
struct GroupNormGrads {
  Tensor dx;              // x's shape
  Tensor dgamma, dbeta;   // (C)
  Tensor dscale, dshift;  // (B, C)
};

GroupNormResult group_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& scale,
                                   const Tensor& shift, const GroupNormOptions& opt);
GroupNormGrads group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                                   const Tensor& gamma, const Tensor& beta, const Tensor& scale,
                                   const Tensor& shift, const GroupNormOptions& opt);

// The cpu implementations write into caller-allocated outputs (tests poison them first). In
// backward, each gradient of `g` that is defined is written (overwritten, not accumulated); the
// caller allocates exactly those whose input is defined.
namespace cpu {
void group_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& scale,
                        const Tensor& shift, const GroupNormOptions& opt, Tensor& y, Tensor& mean, Tensor& rstd);
void group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                         const Tensor& gamma, const Tensor& beta, const Tensor& scale, const Tensor& shift,
                         const GroupNormOptions& opt, GroupNormGrads& g);
}  // namespace cpu

// The readable reference loops (the oracle the tests trust); same contract as cpu::.
namespace ref {
void group_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& scale,
                        const Tensor& shift, const GroupNormOptions& opt, Tensor& y, Tensor& mean, Tensor& rstd);
void group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                         const Tensor& gamma, const Tensor& beta, const Tensor& scale, const Tensor& shift,
                         const GroupNormOptions& opt, GroupNormGrads& g);
}  // namespace ref

}  // namespace diffuse::kernels
