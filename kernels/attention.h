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

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "core/dtype.h"
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

// ---- On a GPU ------------------------------------------------------------------------------------
// launchers of kernels/cuda/attention.cu, flash-style multi-head
// attention forward and backward (diffuse::cuda on the GPU, diffuse::emu under the emulator).
// The math is kernels/attention.h's: q (B, Tq, C), k, v (B, Tk, C), C = heads * D, head h on
// channels [h*D, (h+1)*D); out = softmax(q_h k_h^T / sqrt(D)) v_h. No (Tq, Tk) matrix is stored:
// the forward keeps the row log-sum-exp instead, from which backward recomputes P.
#define DIFFUSE_ATTENTION_LAUNCHERS                                                                    \
  /* Head dims supported by the kernels: 32 and 64. */                                               \
  bool attention_supports_head_dim(int D);                                                            \
  /* out (B, Tq, C) and lse (B, heads, Tq) f32 (of the scaled scores) from q, k, v; dtype f32 or bf16 \
     for q, k, v, out (math in f32). */                                                               \
  void attention_forward(const void* q, const void* k, const void* v, void* out, float* lse, DType dtype, \
                         int64_t B, int64_t Tq, int64_t Tk, int heads, int D, void* stream);            \
  std::size_t attention_backward_workspace_bytes(int64_t B, int64_t Tq, int heads);                   \
  /* dq, dk, dv (written, not accumulated) from dout and the forward's out and lse. */                \
  void attention_backward(const void* dout, const void* q, const void* k, const void* v, const void* out, \
                          const float* lse, void* dq, void* dk, void* dv, DType dtype, int64_t B, int64_t Tq, \
                          int64_t Tk, int heads, int D, void* workspace, void* stream);

// The bf16 tensor-core twins (kernels/cuda/attention_tc.cu; under the emulator, mma.sync is
// kernels/simt's warp collective). Same contract as attention_forward / attention_backward above,
// bf16 only, and the saved log-sum-exp is the same quantity, so either backward takes either
// forward's. Supported: bf16, head dims 32 and 64, every pointer 16-byte aligned, and (on a GPU) a
// current device of compute capability 8.0 or newer; the dispatch runs the SIMT kernels otherwise.
// The backward's workspace is attention_backward_workspace_bytes(B, Tq, heads).
#define DIFFUSE_ATTENTION_TC_LAUNCHERS                                                                 \
  bool attention_tc_supported(DType dtype, int D, std::initializer_list<const void*> ptrs);           \
  void attention_tc_forward(const void* q, const void* k, const void* v, void* out, float* lse, int64_t B, \
                            int64_t Tq, int64_t Tk, int heads, int D, void* stream);                  \
  void attention_tc_backward(const void* dout, const void* q, const void* k, const void* v, const void* out, \
                             const float* lse, void* dq, void* dk, void* dv, int64_t B, int64_t Tq, int64_t Tk, \
                             int heads, int D, void* workspace, void* stream);

namespace diffuse {
namespace cuda { DIFFUSE_ATTENTION_LAUNCHERS DIFFUSE_ATTENTION_TC_LAUNCHERS }
namespace emu { DIFFUSE_ATTENTION_LAUNCHERS DIFFUSE_ATTENTION_TC_LAUNCHERS }
}  // namespace diffuse

// The Tensor-level op on a GPU, which kernels/attention.cpp calls for a tensor on a CUDA device
// (kernels/cuda/attention.cu; only in a build with the CUDA backend).
// Head dims 32 and 64 run the flash kernels (saved = the row log-sum-exp (B, heads, Tq) f32): the
// bf16 tensor-core ones for bf16 on sm_80+, the SIMT ones otherwise. Other head dims materialise
// S = Q K^T per head with cuBLASLt and keep P (B, heads, Tq, Tk), as the cpu.
namespace diffuse::cuda {
kernels::AttentionResult attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int heads);
kernels::AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                           const kernels::AttentionResult& fwd, int heads);
}  // namespace diffuse::cuda
