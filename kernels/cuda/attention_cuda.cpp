// kernels/cuda/attention_cuda.cpp: the Tensor-level attention over the flash kernels of
// kernels/cuda/attention.cu and attention_tc.cu (head dims 32 and 64), or materialised with
// cuBLASLt for other head dims. Checks what the launchers cannot, allocates outputs and workspaces
// from the caching allocator and launches on the current stream; nothing here waits for the device.
#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/softmax.h"
#include "kernels/cuda/tensor_args.h"

namespace diffuse::cuda {

using namespace args;
using kernels::AttentionResult;
using kernels::AttentionGrads;

namespace {

struct AttnGeom {
  int64_t B, Tq, Tk, C;
  int heads, D;
};

AttnGeom attention_geometry(const Tensor& q, const Tensor& k, const Tensor& v, int heads, const char* what) {
  check_act(q, what);
  check_like(k, q, what);
  check_like(v, q, what);
  DF_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3 && k.shape() == v.shape() && q.size(0) == k.size(0) &&
               q.size(2) == k.size(2),
           what, ": q (B,Tq,C), k and v (B,Tk,C), got ", q.str(), ", ", k.str(), ", ", v.str());
  DF_CHECK(heads > 0 && q.size(2) % heads == 0, what, ": C = ", q.size(2), " is not divisible by heads = ", heads);
  return {q.size(0), q.size(1), k.size(1), q.size(2), heads, static_cast<int>(q.size(2) / heads)};
}

// Row-major per-(b, h) GEMM over the interleaved heads: operand h of sample b starts at
// base + b * batch_stride + h * head_offset.
GemmOperand head_operand(const Tensor& t, int h, int64_t head_offset, int64_t ld, int64_t batch_stride, bool trans) {
  GemmOperand o;
  o.ptr = static_cast<const char*>(t.raw()) + static_cast<size_t>(h * head_offset) * dtype_size(t.dtype());
  o.ld = ld;
  o.stride = batch_stride;
  o.trans = trans;
  return o;
}

void* head_ptr(Tensor& t, int h, int64_t head_offset) {
  return static_cast<char*>(t.raw()) + static_cast<size_t>(h * head_offset) * dtype_size(t.dtype());
}

}  // namespace

AttentionResult attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int heads) {
  const AttnGeom g = attention_geometry(q, k, v, heads, "attention");
  set_current_device(q.device());
  AttentionResult r;
  r.out = Tensor::empty(q.shape(), q.dtype(), q.device());
  if (cuda::attention_supports_head_dim(g.D)) {
    r.saved = Tensor::empty({g.B, g.heads, g.Tq}, DType::f32, q.device());
    // bf16 on sm_80+: the tensor-core kernels; f32, older GPUs or unaligned views: the SIMT ones.
    if (cuda::attention_tc_supported(q.dtype(), g.D, {q.raw(), k.raw(), v.raw(), r.out.raw()}))
      cuda::attention_tc_forward(q.raw(), k.raw(), v.raw(), r.out.raw(), r.saved.data<float>(), g.B, g.Tq, g.Tk,
                                 g.heads, g.D, current_stream());
    else
      cuda::attention_forward(q.raw(), k.raw(), v.raw(), r.out.raw(), r.saved.data<float>(), q.dtype(), g.B, g.Tq,
                              g.Tk, g.heads, g.D, current_stream());
    return r;
  }
  // Materialised: S = scale Q_h K_h^T in f32 (B, heads, Tq, Tk), P = softmax(S) (kept in q's dtype
  // for backward), O_h = P_h V_h. One strided-batched GEMM over b per head and product.
  const float scale = 1.0f / std::sqrt(static_cast<float>(g.D));
  const int64_t TT = g.Tq * g.Tk;
  Tensor s = Tensor::empty({g.B, g.heads, g.Tq, g.Tk}, DType::f32, q.device());
  for (int h = 0; h < g.heads; ++h)
    gemm(q.dtype(), DType::f32, g.Tq, g.Tk, g.D, scale, head_operand(q, h, g.D, g.C, g.Tq * g.C, false),
         head_operand(k, h, g.D, g.C, g.Tk * g.C, true), 0.f, head_ptr(s, h, TT), g.Tk, g.heads * TT, g.B);
  Tensor p32 = softmax_last_forward(s);
  r.saved = p32.to(q.dtype());
  for (int h = 0; h < g.heads; ++h)
    gemm(q.dtype(), q.dtype(), g.Tq, g.D, g.Tk, 1.f, head_operand(r.saved, h, TT, g.Tk, g.heads * TT, false),
         head_operand(v, h, g.D, g.C, g.Tk * g.C, false), 0.f, head_ptr(r.out, h, g.D), g.C, g.Tq * g.C, g.B);
  return r;
}

AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionResult& fwd, int heads) {
  const AttnGeom g = attention_geometry(q, k, v, heads, "attention backward");
  check_like(dout, q, "attention backward");
  DF_CHECK(dout.shape() == q.shape(), "attention backward: dout ", dout.str(), " for q ", q.str());
  set_current_device(q.device());
  AttentionGrads r{Tensor::empty(q.shape(), q.dtype(), q.device()), Tensor::empty(k.shape(), k.dtype(), k.device()),
                   Tensor::empty(v.shape(), v.dtype(), v.device())};
  const Tensor& saved = fwd.saved;
  if (saved.dim() == 3) {  // the flash kernels' row log-sum-exp
    DF_CHECK(cuda::attention_supports_head_dim(g.D) && fwd.out.defined() && fwd.out.shape() == q.shape(),
             "attention backward: the forward's output is needed with its log-sum-exp");
    Tensor ws = workspace(cuda::attention_backward_workspace_bytes(g.B, g.Tq, g.heads), q.device());
    if (cuda::attention_tc_supported(q.dtype(), g.D,
                                     {dout.raw(), q.raw(), k.raw(), v.raw(), fwd.out.raw(), r.dq.raw(), r.dk.raw(),
                                      r.dv.raw()}))
      cuda::attention_tc_backward(dout.raw(), q.raw(), k.raw(), v.raw(), fwd.out.raw(), saved.data<float>(),
                                  r.dq.raw(), r.dk.raw(), r.dv.raw(), g.B, g.Tq, g.Tk, g.heads, g.D, ws.raw(),
                                  current_stream());
    else
      cuda::attention_backward(dout.raw(), q.raw(), k.raw(), v.raw(), fwd.out.raw(), saved.data<float>(), r.dq.raw(),
                               r.dk.raw(), r.dv.raw(), q.dtype(), g.B, g.Tq, g.Tk, g.heads, g.D, ws.raw(),
                               current_stream());
    return r;
  }
  DF_CHECK(saved.dim() == 4 && saved.shape() == Shape({g.B, g.heads, g.Tq, g.Tk}),
           "attention backward: saved state ", saved.str(), " is neither P nor the log-sum-exp");
  // dV = P^T dO, dP = dO V^T (f32), dS = P * (dP - rowsum(dP * P)), dQ = scale dS K, dK = scale dS^T Q.
  const float scale = 1.0f / std::sqrt(static_cast<float>(g.D));
  const int64_t TT = g.Tq * g.Tk;
  const Tensor P = saved.to(q.dtype());
  Tensor dp = Tensor::empty({g.B, g.heads, g.Tq, g.Tk}, DType::f32, q.device());
  for (int h = 0; h < g.heads; ++h) {
    gemm(q.dtype(), q.dtype(), g.Tk, g.D, g.Tq, 1.f, head_operand(P, h, TT, g.Tk, g.heads * TT, true),
         head_operand(dout, h, g.D, g.C, g.Tq * g.C, false), 0.f, head_ptr(r.dv, h, g.D), g.C, g.Tk * g.C, g.B);
    gemm(q.dtype(), DType::f32, g.Tq, g.Tk, g.D, 1.f, head_operand(dout, h, g.D, g.C, g.Tq * g.C, false),
         head_operand(v, h, g.D, g.C, g.Tk * g.C, true), 0.f, head_ptr(dp, h, TT), g.Tk, g.heads * TT, g.B);
  }
  const Tensor ds = softmax_last_backward(dp, P.to(DType::f32)).to(q.dtype());
  for (int h = 0; h < g.heads; ++h) {
    gemm(q.dtype(), q.dtype(), g.Tq, g.D, g.Tk, scale, head_operand(ds, h, TT, g.Tk, g.heads * TT, false),
         head_operand(k, h, g.D, g.C, g.Tk * g.C, false), 0.f, head_ptr(r.dq, h, g.D), g.C, g.Tq * g.C, g.B);
    gemm(q.dtype(), q.dtype(), g.Tk, g.D, g.Tq, scale, head_operand(ds, h, TT, g.Tk, g.heads * TT, true),
         head_operand(q, h, g.D, g.C, g.Tq * g.C, false), 0.f, head_ptr(r.dk, h, g.D), g.C, g.Tk * g.C, g.B);
  }
  return r;
}

}  // namespace diffuse::cuda
