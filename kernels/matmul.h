// kernels/matmul.h: matrix products on Tensors, forward and backward.
//
// matmul: (M,K) x (K,N) -> (M,N), or batched (Bt,M,K) x (Bt,K,N) -> (Bt,M,N).
// linear: x (..., In), w (Out, In) as PyTorch stores it, bias (Out) or undefined -> (..., Out);
//         y = x w^T + bias over the M = numel(x) / In rows of x.
// Dtypes: f32 or f64, shared by every operand. The cpu path runs on kernels::gemm (OpenBLAS).
#pragma once

#include "core/tensor.h"

namespace diffuse::kernels {

// Gradients; each is undefined unless asked for.
struct MatmulGrads {
  Tensor da, db;
};
struct LinearGrads {
  Tensor dx, dw, db;
};

Tensor matmul_forward(const Tensor& a, const Tensor& b);
MatmulGrads matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b, bool need_a, bool need_b);
Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias);
// db needs need_b (the caller asks for it only when the forward had a bias).
LinearGrads linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, bool need_x, bool need_w, bool need_b);

// The cpu implementations write into caller-allocated outputs (tests poison them first); in
// backward, each gradient that is defined is written (overwritten, not accumulated).
namespace cpu {
// Allocating forms: the public functions' cpu path.
Tensor matmul_forward(const Tensor& a, const Tensor& b);
MatmulGrads matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b, bool need_a, bool need_b);
Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias);
LinearGrads linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, bool need_x, bool need_w, bool need_b);
void matmul_forward(const Tensor& a, const Tensor& b, Tensor& y);
void matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b, MatmulGrads& r);
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y);
void linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, LinearGrads& r);
}  // namespace cpu

// The plain triple loops (kernels::gemm_reference), the oracle the tests trust; same contract.
namespace ref {
void matmul_forward(const Tensor& a, const Tensor& b, Tensor& y);
void matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b, MatmulGrads& r);
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y);
void linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, LinearGrads& r);
}  // namespace ref

}  // namespace diffuse::kernels
