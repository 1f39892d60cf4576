// kernels/linalg.h: matrix products, convolution, resampling and channel concat on Tensors.
//
// Shapes (NHWC): x (B, H, W, Cin); conv weights (Cout, KH, KW, Cin), so that one output pixel is
// a dot product of a contiguous KH*KW*Cin patch row with a contiguous weight row; linear weights
// (Out, In) as PyTorch stores them.
//
// Dispatch: the cpu path runs on kernels::gemm (OpenBLAS); `ref::` holds the plain loops that
// the tests trust. A cuda branch goes where the DF_FAIL stands.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace diffuse::kernels {

// ---- matmul / linear ----
Tensor matmul_forward(const Tensor& a, const Tensor& b);  // (M,K)x(K,N) or (Bt,M,K)x(Bt,K,N)
struct MatmulGrads { Tensor da, db; };
MatmulGrads matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b, bool need_a, bool need_b);

Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias);  // bias may be undefined
struct LinearGrads { Tensor dx, dw, db; };
LinearGrads linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, bool need_x, bool need_w, bool need_b);

// ---- conv2d ----
struct Conv2dParams {
  int stride = 1;
  int padding = 0;
};
Shape conv2d_output_shape(const Shape& x, const Shape& w, const Conv2dParams& p);
Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p);
struct Conv2dGrads { Tensor dx, dw, db; };
Conv2dGrads conv2d_backward(const Tensor& g, const Tensor& x, const Tensor& w, const Conv2dParams& p, bool need_x,
                             bool need_w, bool need_b);

// ---- resampling and channel concat ----
Tensor upsample_nearest2x_forward(const Tensor& x);   // (B,H,W,C) -> (B,2H,2W,C)
Tensor upsample_nearest2x_backward(const Tensor& g);  // sums each 2x2 block
Tensor avg_pool2x_forward(const Tensor& x);           // (B,H,W,C) -> (B,H/2,W/2,C)
Tensor avg_pool2x_backward(const Tensor& g);          // spreads g/4 over each 2x2 block
Tensor concat_last_forward(const std::vector<Tensor>& xs);
Tensor slice_last_forward(const Tensor& x, int64_t begin, int64_t end);
// g (..., C) scattered back into zeros of (..., C_total) at [begin, end).
Tensor slice_last_backward(const Tensor& g, int64_t total, int64_t begin);

namespace ref {
template <class T>
void conv2d_forward(const T* x, const T* w, const T* bias, T* y, int64_t B, int64_t H, int64_t W, int64_t Cin,
                    int64_t Cout, int64_t KH, int64_t KW, int stride, int pad, int64_t Ho, int64_t Wo);
template <class T>
void conv2d_backward(const T* g, const T* x, const T* w, T* dx, T* dw, T* db, int64_t B, int64_t H, int64_t W,
                     int64_t Cin, int64_t Cout, int64_t KH, int64_t KW, int stride, int pad, int64_t Ho, int64_t Wo);
}  // namespace ref

}  // namespace diffuse::kernels
