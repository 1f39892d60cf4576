// kernels/time_embedding.h: the sinusoidal timestep embedding (Vaswani et al. 2017 positional
// encoding, as used by DDPM and ADM; the options of diffusers' `get_timestep_embedding`).
//
// t (B) f32 (or f64), continuous or integer timesteps; dim > 0; half = dim / 2 (floor):
//   freq[i] = exp(-ln(max_period) * i / (half - downscale_freq_shift)),   i = 0 .. half-1
//   arg[b,i] = scale * t[b] * freq[i]
//   emb[b]   = [cos(arg), sin(arg)]   when flip_sin_to_cos
//            = [sin(arg), cos(arg)]   otherwise
//   an odd dim gets one zero column at the end.
// Which options reproduce which code:
//   DDPM (Ho et al. 2020, diffusion_utils `get_timestep_embedding`): log(10000) / (half - 1) and
//     [sin, cos]  ->  {max_period 10000, flip_sin_to_cos false, downscale_freq_shift 1, scale 1}
//   ADM / improved DDPM (guided_diffusion/nn.py `timestep_embedding`): exp(-ln(max_period) i / half)
//     and [cos, sin]  ->  {max_period 10000, flip_sin_to_cos true, downscale_freq_shift 0, scale 1}
//   diffusers `Timesteps(dim, flip_sin_to_cos, downscale_freq_shift)` maps one to one.
// The defaults below are the contract's ({flip true, shift 1}). half - shift must be > 0.
// The cpu path evaluates the angle and sin/cos in double and rounds once, so it is the accurate
// answer for the f32 input (PyTorch's f32 evaluation differs by ~ulp(arg), 6e-5 at t = 1000).
// No gradient with respect to t.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace diffuse::kernels {

struct TimeEmbeddingOptions {
  float max_period = 10000.f;
  bool flip_sin_to_cos = true;
  float downscale_freq_shift = 1.f;
  float scale = 1.f;
};

Tensor timestep_embedding(const Tensor& t /*(B) f32*/, int dim, const TimeEmbeddingOptions& opt = {});  // (B,dim)

namespace cpu {
void timestep_embedding(const Tensor& t, int dim, const TimeEmbeddingOptions& opt, Tensor& out);
}  // namespace cpu

}  // namespace diffuse::kernels

// ---- On a GPU ------------------------------------------------------------------------------------
// launcher of kernels/cuda/time_embedding.cu (diffuse::cuda on the
// GPU, diffuse::emu under the emulator). The formula and the options are kernels/time_embedding.h's.
#define DIFFUSE_TIME_EMBEDDING_LAUNCHERS                                                               \
  /* out (batch, dim) f32 = the sinusoidal embedding of t (batch) f32, per kernels/time_embedding.h */ \
  void timestep_embedding(const float* t, float* out, int64_t batch, int dim,                          \
                          const kernels::TimeEmbeddingOptions& opt, void* stream);

namespace diffuse {
namespace cuda { DIFFUSE_TIME_EMBEDDING_LAUNCHERS }
namespace emu { DIFFUSE_TIME_EMBEDDING_LAUNCHERS }
}  // namespace diffuse

// The Tensor-level op on a GPU, which kernels/time_embedding.cpp calls for a tensor on a CUDA device
// (kernels/cuda/time_embedding.cu; only in a build with the CUDA backend).
// t f32 (B); the embedding (B, dim) f32.
namespace diffuse::cuda {
Tensor timestep_embedding(const Tensor& t, int dim, const kernels::TimeEmbeddingOptions& opt);
}  // namespace diffuse::cuda
