// kernels/attention.h: multi-head scaled dot-product attention (Vaswani et al. 2017, eq. 1),
// self- and cross-attention, forward and backward.
//
// Shapes: q (B, Tq, C), k and v (B, Tk, C), C = heads * D; head h uses channels [h*D, (h+1)*D).
//   S = Q_h K_h^T / sqrt(D)   (Tq, Tk);  P = softmax over the last dim of S;  O_h = P V_h.
// The output (B, Tq, C) interleaves heads in the channels, like the input (no transposes needed
// before or after: the UNet's attention block reshapes (B,H,W,C) to (B,H*W,C) and back).
// Forward returns P (B, heads, Tq, Tk), which backward reuses: at the UNet's sizes (T <= 196) it
// is small; a flash-style CUDA kernel recomputes it instead.
// Backward (per b, h; dO the output gradient):
//   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dP * P)),  dQ = dS K / sqrt(D),  dK = dS^T Q / sqrt(D).
// f32 or f64, shared by q, k, v.
#pragma once

#include "core/tensor.h"

namespace diffuse::kernels {

struct AttentionResult {
  Tensor out;  // (B, Tq, C)
  Tensor p;    // (B, heads, Tq, Tk) softmax probabilities
};

struct AttentionGrads {
  Tensor dq, dk, dv;
};

AttentionResult attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int heads);
AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& p, int heads);

// The cpu fast path (per-(b, h) GEMMs) and the reference loops, writing into caller-allocated
// outputs (out, p; dq, dk, dv), overwritten.
namespace cpu {
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int heads, Tensor& out, Tensor& p);
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& p,
                        int heads, Tensor& dq, Tensor& dk, Tensor& dv);
}  // namespace cpu
namespace ref {
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int heads, Tensor& out, Tensor& p);
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& p,
                        int heads, Tensor& dq, Tensor& dk, Tensor& dv);
}  // namespace ref

}  // namespace diffuse::kernels
