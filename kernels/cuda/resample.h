// kernels/cuda/resample.h: launchers of kernels/cuda/resample.cu (diffuse::cuda on the GPU,
// diffuse::emu under the emulator): the UNet's 2x nearest upsampling and 2x2 average pooling on
// NHWC images, forward and backward (the math of kernels/resample.h). Every launcher takes the
// SMALL grid (B, H, W, C); the large one is (B, 2H, 2W, C). dtype f32 or bf16; math in f32.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "core/tensor.h"

#define DIFFUSE_RESAMPLE_LAUNCHERS                                                                     \
  /* y (B,2H,2W,C) = x (B,H,W,C) repeated over each 2x2 block */                                      \
  void upsample_nearest2x_forward(const void* x, void* y, DType dtype, int64_t B, int64_t H, int64_t W, int64_t C, \
                                  void* stream);                                                      \
  /* dx (B,H,W,C) = the sum of each 2x2 block of g (B,2H,2W,C) */                                     \
  void upsample_nearest2x_backward(const void* g, void* dx, DType dtype, int64_t B, int64_t H, int64_t W, int64_t C, \
                                   void* stream);                                                     \
  /* y (B,H,W,C) = the mean of each 2x2 block of x (B,2H,2W,C) */                                     \
  void avg_pool2x_forward(const void* x, void* y, DType dtype, int64_t B, int64_t H, int64_t W, int64_t C, \
                          void* stream);                                                              \
  /* dx (B,2H,2W,C) = g (B,H,W,C) / 4 over each 2x2 block */                                          \
  void avg_pool2x_backward(const void* g, void* dx, DType dtype, int64_t B, int64_t H, int64_t W, int64_t C, \
                           void* stream);

namespace diffuse {
namespace cuda { DIFFUSE_RESAMPLE_LAUNCHERS }
namespace emu { DIFFUSE_RESAMPLE_LAUNCHERS }
}  // namespace diffuse

// The Tensor-level op on a GPU, which kernels/resample.cpp calls for a tensor on a CUDA device
// (kernels/cuda/resample_cuda.cpp; only in a build with the CUDA backend).
namespace diffuse::cuda {
Tensor upsample_nearest2x_forward(const Tensor& x);
Tensor upsample_nearest2x_backward(const Tensor& g);
Tensor avg_pool2x_forward(const Tensor& x);
Tensor avg_pool2x_backward(const Tensor& g);
}  // namespace diffuse::cuda
