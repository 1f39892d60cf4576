// kernels/cuda/noise.h: launchers of kernels/cuda/noise.cu, the fused forward-noising
// q(z_t | x) (diffuse::cuda on the GPU, diffuse::emu under the emulator).
#pragma once

#include <cstdint>

#include "core/tensor.h"

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
// (kernels/cuda/noise_cuda.cpp; only in a build with the CUDA backend).
// The same eps as the cpu's, bit for bit; x, alpha, sigma, z, eps f32 on one GPU.
namespace diffuse::cuda {
void noise_forward(const Tensor& x, const Tensor& alpha, const Tensor& sigma, uint64_t seed, uint64_t offset,
                   Tensor& z, Tensor& eps);
}  // namespace diffuse::cuda
