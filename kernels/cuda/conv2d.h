// kernels/cuda/conv2d.h: 2-D convolution on cuDNN, NHWC (kernels/cuda/conv2d_cuda.cpp; only in a
// build with the CUDA backend), which kernels/conv2d.cpp calls for tensors on a CUDA device.
#pragma once

#include "core/tensor.h"
#include "kernels/conv2d.h"

namespace diffuse::cuda {

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const kernels::Conv2dParams& p);
kernels::Conv2dGrads conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w,
                                     const kernels::Conv2dParams& p, bool need_x, bool need_w, bool need_b);

}  // namespace diffuse::cuda
