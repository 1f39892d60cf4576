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

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
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

// ---- On a GPU ------------------------------------------------------------------------------------
// launchers of kernels/cuda/group_norm.cu (diffuse::cuda on the GPU,
// diffuse::emu under the emulator): GroupNorm + AdaGN scale/shift + SiLU, forward and backward,
// on channels-last x (B, N, C) (N = H*W or T), the math of kernels/group_norm.h.
//
// Activations x, y, dy, dx: f32 or bf16 (`dtype`); everything else f32: gamma, beta (C), scale,
// shift (B, C) (each nullable: 1, 0, 0, 0), the statistics mean, rstd (B, G), and the parameter
// gradients. Pointers are device memory (host under the emulator). `workspace` holds
// group_norm_workspace_bytes(...) bytes of device memory.
namespace diffuse::kernels {
// How the kernels split the work; the defaults choose by size. Tests and benchmarks force a path.
struct GroupNormLaunch {
  int splits = 0;          // blocks per (b, g) (forward) or per (b, 32 channels) (backward); 0: automatic
  bool allow_fused = true; // forward in one pass (the group held in shared memory) when it fits
};
}  // namespace diffuse::kernels

#define DIFFUSE_GROUP_NORM_LAUNCHERS                                                                   \
  std::size_t group_norm_workspace_bytes(int64_t B, int64_t N, int64_t C, int G,                      \
                                         const kernels::GroupNormLaunch& how = {});                   \
  /* y = act((x - mean) * rstd * gamma + beta) * (1 + scale) + shift), writing mean and rstd */      \
  void group_norm_forward(const void* x, void* y, DType dtype, const float* gamma, const float* beta,  \
                          const float* scale, const float* shift, float* mean, float* rstd, int64_t B, \
                          int64_t N, int64_t C, int G, float eps, bool silu, void* workspace,         \
                          void* stream, const kernels::GroupNormLaunch& how = {});                    \
  /* Gradients from dy and the forward's statistics; dx and each parameter gradient that is non-null \
     is written (overwritten). dgamma, dbeta (C); dscale, dshift (B, C). */                           \
  void group_norm_backward(const void* dy, const void* x, void* dx, DType dtype, const float* mean,    \
                           const float* rstd, const float* gamma, const float* beta, const float* scale, \
                           const float* shift, float* dgamma, float* dbeta, float* dscale, float* dshift, \
                           int64_t B, int64_t N, int64_t C, int G, bool silu, void* workspace, void* stream, \
                           const kernels::GroupNormLaunch& how = {});

namespace diffuse {
namespace cuda { DIFFUSE_GROUP_NORM_LAUNCHERS }
namespace emu { DIFFUSE_GROUP_NORM_LAUNCHERS }
}  // namespace diffuse

// The Tensor-level op on a GPU, which kernels/group_norm.cpp calls for a tensor on a CUDA device
// (kernels/cuda/group_norm.cu; only in a build with the CUDA backend).
// x f32 or bf16; gamma, beta f32 (or x's dtype); scale, shift any float dtype (converted to f32 for
// the kernel, their gradients returned in their own dtype); mean and rstd f32.
namespace diffuse::cuda {
kernels::GroupNormResult group_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                            const Tensor& scale, const Tensor& shift,
                                            const kernels::GroupNormOptions& opt);
kernels::GroupNormGrads group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                                            const Tensor& gamma, const Tensor& beta, const Tensor& scale,
                                            const Tensor& shift, const kernels::GroupNormOptions& opt);
}  // namespace diffuse::cuda
