// kernels/resample.h: the UNet's 2x resampling on NHWC images, forward and backward.
//
// upsample_nearest2x: x (B,H,W,C) -> (B,2H,2W,C), y[b,h,w,c] = x[b,h/2,w/2,c]; its backward sums
//                     each 2x2 block of the gradient.
// avg_pool2x:         x (B,H,W,C), H and W even -> (B,H/2,W/2,C), the mean of each 2x2 block; its
//                     backward spreads g/4 over the block.
// Dtypes: f32 or f64.
#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "core/tensor.h"

namespace diffuse::kernels {

Tensor upsample_nearest2x_forward(const Tensor& x);
Tensor upsample_nearest2x_backward(const Tensor& g);  // g (B,2H,2W,C) -> (B,H,W,C)
Tensor avg_pool2x_forward(const Tensor& x);
Tensor avg_pool2x_backward(const Tensor& g);  // g (B,H,W,C) -> (B,2H,2W,C)

// The cpu implementations (OpenMP over pixels) write into caller-allocated outputs.
namespace cpu {
// Allocating forms: check x (f32 or f64 (B,H,W,C) on the cpu) and return the output.
Tensor upsample_nearest2x_forward(const Tensor& x);
Tensor upsample_nearest2x_backward(const Tensor& g);
Tensor avg_pool2x_forward(const Tensor& x);
Tensor avg_pool2x_backward(const Tensor& g);
void upsample_nearest2x_forward(const Tensor& x, Tensor& y);
void upsample_nearest2x_backward(const Tensor& g, Tensor& dx);
void avg_pool2x_forward(const Tensor& x, Tensor& y);
void avg_pool2x_backward(const Tensor& g, Tensor& dx);
}  // namespace cpu

// The plain loops over output elements, the oracle the tests trust; same contract.
namespace ref {
void upsample_nearest2x_forward(const Tensor& x, Tensor& y);
void upsample_nearest2x_backward(const Tensor& g, Tensor& dx);
void avg_pool2x_forward(const Tensor& x, Tensor& y);
void avg_pool2x_backward(const Tensor& g, Tensor& dx);
}  // namespace ref

}  // namespace diffuse::kernels

// ---- On a GPU ------------------------------------------------------------------------------------
// launchers of kernels/cuda/resample.cu (diffuse::cuda on the GPU,
// diffuse::emu under the emulator): the UNet's 2x nearest upsampling and 2x2 average pooling on
// NHWC images, forward and backward (the math of kernels/resample.h). Every launcher takes the
// SMALL grid (B, H, W, C); the large one is (B, 2H, 2W, C). dtype f32 or bf16; math in f32.
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
// (kernels/cuda/resample.cu; only in a build with the CUDA backend).
namespace diffuse::cuda {
Tensor upsample_nearest2x_forward(const Tensor& x);
Tensor upsample_nearest2x_backward(const Tensor& g);
Tensor avg_pool2x_forward(const Tensor& x);
Tensor avg_pool2x_backward(const Tensor& g);
}  // namespace diffuse::cuda
