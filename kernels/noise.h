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
