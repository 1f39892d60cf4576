// kernels/cuda/elementwise.h: launchers of kernels/cuda/elementwise.cu, for CUDA (diffuse::cuda)
// and the emulator (diffuse::emu). Pointers are device memory (host memory for emu); `stream` is
// a cudaStream_t as void* (core/stream.h current_stream()). dtype: f32 or bf16 (math in f32).
#pragma once

#include <cstdint>

#include "core/dtype.h"

#define DIFFUSE_ELEMENTWISE_LAUNCHERS                                                                  \
  /* y[i] = x[i] * sigmoid(x[i]); y may alias x */                                                    \
  void silu_forward(const void* x, void* y, DType dtype, int64_t n, void* stream);                    \
  /* dx[i] (+)= dy[i] * s (1 + x (1 - s)), s = sigmoid(x[i]); += when accumulate, else = */            \
  void silu_backward(const void* x, const void* dy, void* dx, DType dtype, int64_t n, bool accumulate, \
                     void* stream);                                                                   \
  /* y[i] = a * x[i] + b * y[i], f32; with b == 0, y is only written (BLAS's beta = 0) */             \
  void axpby(float a, const float* x, float b, float* y, int64_t n, void* stream);

namespace diffuse {
namespace cuda { DIFFUSE_ELEMENTWISE_LAUNCHERS }
namespace emu { DIFFUSE_ELEMENTWISE_LAUNCHERS }
}  // namespace diffuse
