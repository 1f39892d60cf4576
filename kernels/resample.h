// kernels/resample.h: the UNet's 2x resampling on NHWC images, forward and backward.
//
// upsample_nearest2x: x (B,H,W,C) -> (B,2H,2W,C), y[b,h,w,c] = x[b,h/2,w/2,c]; its backward sums
//                     each 2x2 block of the gradient.
// avg_pool2x:         x (B,H,W,C), H and W even -> (B,H/2,W/2,C), the mean of each 2x2 block; its
//                     backward spreads g/4 over the block.
// Dtypes: f32 or f64.
#pragma once

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
