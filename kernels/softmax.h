// kernels/softmax.h: softmax over the last dimension, forward and backward.
//
// Shapes: x (R..., L): rows of length L. y = exp(x - max) / sum(exp(x - max)) per row: the max
// is subtracted so exp never overflows (the result is unchanged, softmax is shift-invariant).
// Backward from the output y: dx = y * (dy - sum(dy * y)) per row (the Jacobian
// diag(y) - y y^T applied to dy). f32 or f64.
#pragma once

#include "core/tensor.h"

namespace diffuse::kernels {

Tensor softmax_last_forward(const Tensor& x);
Tensor softmax_last_backward(const Tensor& dy, const Tensor& y);

// cpu fast path and reference loops, writing into caller-allocated outputs.
namespace cpu {
void softmax_last_forward(const Tensor& x, Tensor& y);
// One row of length L (x and y may alias), and its backward: shared with attention's fast path.
template <class T> void softmax_row(const T* x, T* y, int64_t L);
template <class T> void softmax_backward_row(const T* dy, const T* y, T* dx, int64_t L);
void softmax_last_backward(const Tensor& dy, const Tensor& y, Tensor& dx);
}  // namespace cpu
namespace ref {
void softmax_last_forward(const Tensor& x, Tensor& y);
void softmax_last_backward(const Tensor& dy, const Tensor& y, Tensor& dx);
}  // namespace ref

}  // namespace diffuse::kernels
