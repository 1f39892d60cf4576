// kernels/noise.h: the fused forward noising q(z_t | x) of a diffusion training step,
//   z_t = alpha[b] * x + sigma[b] * eps,   eps ~ N(0, I) drawn here,
// with eps[i] = philox_normal(seed, offset, i) for the flat (row-major) element index i of x,
// the same stream Tensor::randn(x.shape(), seed, offset) gives; so the CUDA kernel and this
// reference draw bit-identical eps, and z_t agrees up to float rounding (one FMA).
//
// On a GPU inside a PhiloxSeedXorScope (core/graph.h) the seed is seed ^ the scope's device word,
// read when the kernel runs: a captured training step draws each replay's noise from its own seed.
//
// Shapes: x (B, ...) (NHWC images); alpha, sigma (B), x's dtype (f32, or f64 with eps rounded
// from the f32 variate); z and eps caller-allocated with x's shape and dtype (both overwritten).
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace diffuse::kernels {

void noise_forward(const Tensor& x, const Tensor& alpha, const Tensor& sigma, uint64_t seed, uint64_t offset,
                   Tensor& z, Tensor& eps);

namespace cpu {
void noise_forward(const Tensor& x, const Tensor& alpha, const Tensor& sigma, uint64_t seed, uint64_t offset,
                   Tensor& z, Tensor& eps);
}  // namespace cpu

}  // namespace diffuse::kernels

// ---- On a GPU ------------------------------------------------------------------------------------
// launchers of kernels/cuda/noise.cu, the fused forward-noising
// q(z_t | x) (diffuse::cuda on the GPU, diffuse::emu under the emulator).
#define DIFFUSE_NOISE_LAUNCHERS                                                                        \
  /* For b < batch, e < n_per_sample, i = b * n_per_sample + e:                                       \
       eps[i] = element i of the Philox normal stream (seed, offset)  (= Tensor::randn(shape, seed,   \
                offset) for any shape of batch * n_per_sample elements, bit for bit)                  \
       z[i]   = alpha[b] * x[i] + sigma[b] * eps[i]  (two rounded products, one rounded sum)          \
     alpha, sigma: (batch) floats in device memory. x, z, eps: (batch, n_per_sample) f32; eps may be  \
     null when only z is wanted. seed_xor (nullable, device memory): the stream's seed is             \
     seed ^ *seed_xor, read when the kernel runs, so a captured CUDA graph of a training step draws   \
     another step's noise per replay (core/graph.h, PhiloxSeedXorScope). */                           \
  void noise_forward(const float* x, const float* alpha, const float* sigma, float* z, float* eps, int64_t batch, \
                     int64_t n_per_sample, uint64_t seed, uint64_t offset, void* stream,                \
                     const uint64_t* seed_xor = nullptr);

namespace diffuse {
namespace cuda { DIFFUSE_NOISE_LAUNCHERS }
namespace emu { DIFFUSE_NOISE_LAUNCHERS }
}  // namespace diffuse

// The Tensor-level op on a GPU, which kernels/noise.cpp calls for a tensor on a CUDA device
// (kernels/cuda/noise.cu; only in a build with the CUDA backend).
// The same eps as the cpu's, bit for bit; x, alpha, sigma, z, eps f32 on one GPU.
namespace diffuse::cuda {
void noise_forward(const Tensor& x, const Tensor& alpha, const Tensor& sigma, uint64_t seed, uint64_t offset,
                   Tensor& z, Tensor& eps);
}  // namespace diffuse::cuda
