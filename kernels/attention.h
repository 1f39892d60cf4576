// kernels/attention.h: multi-head scaled dot-product attention (Vaswani et al. 2017, eq. 1),
// self- and cross-attention, forward and backward.
//
// Shapes: q (B, Tq, C), k and v (B, Tk, C), C = heads * D; head h uses channels [h*D, (h+1)*D).
//   S = Q_h K_h^T / sqrt(D)   (Tq, Tk);  P = softmax over the last dim of S;  O_h = P V_h.
// The output (B, Tq, C) interleaves heads in the channels, like the input (no transposes needed
// before or after: the UNet's attention block reshapes (B,H,W,C) to (B,H*W,C) and back).
// Forward returns the output and what backward needs, `saved`, which depends on the path: the cpu
// keeps P (B, heads, Tq, Tk), small at the UNet's sizes (T <= 256), and backward reuses it; on a
// GPU the flash kernels (head dims 32 and 64) keep only the row log-sum-exp of the scaled scores,
// (B, heads, Tq) f32, and backward recomputes P from it, q and k (other head dims materialise P
// there too). Backward takes the whole forward result back (it also needs `out` on the GPU).
// Backward (per b, h; dO the output gradient):
//   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dP * P)),  dQ = dS K / sqrt(D),  dK = dS^T Q / sqrt(D).
// f32 or f64 on the cpu, f32 or bf16 on a GPU; shared by q, k, v.
#pragma once

#include "core/tensor.h"

namespace diffuse::kernels {

struct AttentionResult {
  Tensor out;    // (B, Tq, C)
  Tensor saved;  // P (B, heads, Tq, Tk), or on a GPU's flash path the log-sum-exp (B, heads, Tq) f32
};

struct AttentionGrads {
  Tensor dq, dk, dv;
};

AttentionResult attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int heads);
AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionResult& fwd, int heads);

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
