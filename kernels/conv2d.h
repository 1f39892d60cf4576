// kernels/conv2d.h: 2-D convolution on NHWC images, forward and backward.
//
// Shapes: x (B, H, W, Cin); w (Cout, KH, KW, Cin), so that one output pixel is the dot product of
// its input patch (KH*KW runs of Cin contiguous values) with one contiguous weight row; bias (Cout)
// or undefined; y (B, Ho, Wo, Cout) with Ho = (H + 2 pad - KH) / stride + 1 (likewise Wo), zero
// padding, cross-correlation as PyTorch's conv2d. Dtypes: f32 or f64, shared by x, w and bias.
#pragma once

#include "core/tensor.h"

namespace diffuse::kernels {

struct Conv2dParams {
  int stride = 1;
  int padding = 0;
};

// Gradients; dx, dw, db are undefined unless asked for (db also needs a bias in the forward).
struct Conv2dGrads {
  Tensor dx, dw, db;
};

Shape conv2d_output_shape(const Shape& x, const Shape& w, const Conv2dParams& p);
Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p);
Conv2dGrads conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Conv2dParams& p, bool need_x,
                            bool need_w, bool need_b);

// The cpu implementations write into caller-allocated outputs (tests poison them first); in
// backward, each gradient of `g` that is defined is written (overwritten, not accumulated).
namespace cpu {
void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p, Tensor& y);
void conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Conv2dParams& p, Conv2dGrads& g);
}  // namespace cpu

// The plain 7-deep loops (the oracle the tests trust); same contract as cpu::.
namespace ref {
void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p, Tensor& y);
void conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Conv2dParams& p, Conv2dGrads& g);
}  // namespace ref

}  // namespace diffuse::kernels

// ---- On a GPU ------------------------------------------------------------------------------------
// 2-D convolution on cuDNN, NHWC (kernels/cuda/conv2d_cuda.cpp; only in a
// build with the CUDA backend), which kernels/conv2d.cpp calls for tensors on a CUDA device.
namespace diffuse::cuda {

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const kernels::Conv2dParams& p);
kernels::Conv2dGrads conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w,
                                     const kernels::Conv2dParams& p, bool need_x, bool need_w, bool need_b);

}  // namespace diffuse::cuda
