// kernels/cuda/nn_cuda.cpp: the Tensor-level network ops on a GPU (kernels/cuda/dispatch.h):
// softmax, cross-entropy, GroupNorm, attention, embedding, resampling, concat/slice and the
// sampler step, over the launchers of kernels/cuda/*.cu (and cuBLASLt for attention with head
// dims the flash kernels do not have). Each function checks what its launcher cannot, allocates
// outputs and workspaces from the caching allocator and launches on the current stream.
#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/concat.h"
#include "kernels/cuda/dispatch.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/group_norm.h"
#include "kernels/cuda/resample.h"
#include "kernels/cuda/sampler_step.h"
#include "kernels/cuda/softmax.h"

namespace diffuse::kernels::gpu {

namespace {

void check_act(const Tensor& t, const char* what) {
  DF_CHECK(t.defined(), what, ": undefined tensor");
  DF_CHECK(t.device().is_cuda(), what, ": ", t.str(), " is not on a GPU");
  DF_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, what, " on ", t.device().str(), ": ", t.str(),
           " (f32 or bf16 expected)");
}

void check_like(const Tensor& t, const Tensor& ref, const char* what) {
  check_act(t, what);
  check_device(t, ref.device(), what);
  DF_CHECK(t.dtype() == ref.dtype(), what, ": dtypes differ: ", t.str(), " and ", ref.str());
}

Tensor workspace(size_t bytes, Device d) {
  return Tensor::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, DType::u8, d);
}

// An optional parameter as the f32 the kernels read (a copy only when it is not f32 already).
Tensor as_f32(const Tensor& t) { return t.defined() ? t.to(DType::f32) : Tensor(); }
const float* f32_or_null(const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; }
// A gradient computed in f32 returned in the dtype of the input it belongs to.
Tensor in_dtype_of(const Tensor& g, const Tensor& input) { return g.defined() ? g.to(input.dtype()) : g; }

}  // namespace

// ---- softmax, cross-entropy -------------------------------------------------------------------

Tensor softmax_last_forward(const Tensor& x) {
  check_act(x, "softmax_last");
  set_current_device(x.device());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t L = x.dim() ? x.size(-1) : 1;
  cuda::softmax_forward(x.raw(), y.raw(), x.dtype(), L ? x.numel() / L : 0, L, current_stream());
  return y;
}

Tensor softmax_last_backward(const Tensor& dy, const Tensor& y) {
  check_act(y, "softmax_last backward");
  check_like(dy, y, "softmax_last backward");
  check_same_shape(dy, y, "softmax_last backward");
  set_current_device(y.device());
  Tensor dx = Tensor::empty(y.shape(), y.dtype(), y.device());
  const int64_t L = y.dim() ? y.size(-1) : 1;
  cuda::softmax_backward(dy.raw(), y.raw(), dx.raw(), y.dtype(), L ? y.numel() / L : 0, L, current_stream());
  return dx;
}

// Labels out of range give a NaN loss instead of an error: checking them would wait for the GPU.
CrossEntropyResult cross_entropy_forward(const Tensor& logits, const Tensor& labels) {
  check_act(logits, "cross_entropy");
  DF_CHECK(logits.dim() == 2 && labels.dtype() == DType::i64 && labels.shape() == Shape({logits.size(0)}),
           "cross_entropy: logits (B, K) and i64 labels (B), got ", logits.str(), ", ", labels.str());
  check_device(labels, logits.device(), "cross_entropy labels");
  set_current_device(logits.device());
  const Tensor x = logits.to(DType::f32);  // the loss is f32 whatever the activations
  const int64_t B = x.size(0), K = x.size(1);
  CrossEntropyResult r;
  r.loss = Tensor::empty({1}, DType::f32, x.device());
  r.lse = Tensor::empty({B}, DType::f32, x.device());
  Tensor rows = Tensor::empty({B}, DType::f32, x.device());
  cuda::cross_entropy_forward(x.data<float>(), labels.data<int64_t>(), r.lse.data<float>(), rows.data<float>(),
                              r.loss.data<float>(), B, K, current_stream());
  return r;
}

Tensor cross_entropy_backward(const Tensor& dloss, const Tensor& logits, const Tensor& labels, const Tensor& lse) {
  check_act(logits, "cross_entropy backward");
  set_current_device(logits.device());
  const Tensor x = logits.to(DType::f32), g = dloss.to(DType::f32);
  Tensor d = Tensor::empty(x.shape(), DType::f32, x.device());
  cuda::cross_entropy_backward(g.data<float>(), x.data<float>(), labels.data<int64_t>(), lse.data<float>(),
                               d.data<float>(), x.size(0), x.size(1), current_stream());
  return d.to(logits.dtype());
}

// ---- GroupNorm ------------------------------------------------------------------------------------

GroupNormResult group_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& scale,
                                   const Tensor& shift, const GroupNormOptions& opt) {
  check_act(x, "group_norm");
  DF_CHECK(x.dim() >= 2, "group_norm: x must be (B, ..., C), got ", x.str());
  const int64_t B = x.size(0), C = x.size(-1), N = x.numel() / std::max<int64_t>(B * C, 1);
  for (const Tensor* t : {&gamma, &beta, &scale, &shift})
    if (t->defined()) check_device(*t, x.device(), "group_norm");
  set_current_device(x.device());
  const Tensor g = as_f32(gamma), b = as_f32(beta), s = as_f32(scale), h = as_f32(shift);
  GroupNormResult r;
  r.y = Tensor::empty(x.shape(), x.dtype(), x.device());
  r.mean = Tensor::empty({B, opt.groups}, DType::f32, x.device());
  r.rstd = Tensor::empty({B, opt.groups}, DType::f32, x.device());
  Tensor ws = workspace(cuda::group_norm_workspace_bytes(B, N, C, opt.groups), x.device());
  cuda::group_norm_forward(x.raw(), r.y.raw(), x.dtype(), f32_or_null(g), f32_or_null(b), f32_or_null(s),
                           f32_or_null(h), r.mean.data<float>(), r.rstd.data<float>(), B, N, C, opt.groups, opt.eps,
                           opt.silu, ws.raw(), current_stream());
  return r;
}

GroupNormGrads group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                                   const Tensor& gamma, const Tensor& beta, const Tensor& scale, const Tensor& shift,
                                   const GroupNormOptions& opt) {
  check_act(x, "group_norm backward");
  check_like(dy, x, "group_norm backward");
  check_same_shape(dy, x, "group_norm backward");
  const int64_t B = x.size(0), C = x.size(-1), N = x.numel() / std::max<int64_t>(B * C, 1);
  set_current_device(x.device());
  const Tensor g = as_f32(gamma), b = as_f32(beta), s = as_f32(scale), h = as_f32(shift);
  const Tensor m = mean.to(DType::f32), rs = rstd.to(DType::f32);
  auto grad_for = [&](const Tensor& t, const Shape& shape) {
    return t.defined() ? Tensor::empty(shape, DType::f32, x.device()) : Tensor();
  };
  GroupNormGrads out;
  out.dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor dg = grad_for(gamma, {C}), db = grad_for(beta, {C}), ds = grad_for(scale, {B, C}), dh = grad_for(shift, {B, C});
  Tensor ws = workspace(cuda::group_norm_workspace_bytes(B, N, C, opt.groups), x.device());
  auto ptr = [](Tensor& t) { return t.defined() ? t.data<float>() : nullptr; };
  cuda::group_norm_backward(dy.raw(), x.raw(), out.dx.raw(), x.dtype(), m.data<float>(), rs.data<float>(),
                            f32_or_null(g), f32_or_null(b), f32_or_null(s), f32_or_null(h), ptr(dg), ptr(db), ptr(ds),
                            ptr(dh), B, N, C, opt.groups, opt.silu, ws.raw(), current_stream());
  out.dgamma = in_dtype_of(dg, gamma);
  out.dbeta = in_dtype_of(db, beta);
  out.dscale = in_dtype_of(ds, scale);
  out.dshift = in_dtype_of(dh, shift);
  if (out.dgamma.defined()) out.dgamma = out.dgamma.reshape(gamma.shape());
  if (out.dbeta.defined()) out.dbeta = out.dbeta.reshape(beta.shape());
  if (out.dscale.defined()) out.dscale = out.dscale.reshape(scale.shape());
  if (out.dshift.defined()) out.dshift = out.dshift.reshape(shift.shape());
  return out;
}

// ---- attention ------------------------------------------------------------------------------------
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

// ---- embedding ----------------------------------------------------------------------------------

// Ids outside the table give NaN rows (and no gradient): checking them would wait for the GPU.
Tensor embedding_forward(const Tensor& ids, const Tensor& table) {
  check_act(table, "embedding");
  DF_CHECK(table.dim() == 2 && ids.dim() == 1 && ids.dtype() == DType::i64, "embedding: i64 ids (B) and a (K, D) ",
           "table, got ", ids.str(), ", ", table.str());
  check_device(ids, table.device(), "embedding ids");
  set_current_device(table.device());
  Tensor out = Tensor::empty({ids.numel(), table.size(1)}, table.dtype(), table.device());
  cuda::embedding_forward(ids.data<int64_t>(), table.raw(), out.raw(), table.dtype(), ids.numel(), table.size(0),
                          table.size(1), current_stream());
  return out;
}

Tensor embedding_backward(const Tensor& dy, const Tensor& ids, const Shape& table_shape) {
  check_act(dy, "embedding backward");
  DF_CHECK(table_shape.rank() == 2 && dy.shape() == Shape({ids.numel(), table_shape[1]}),
           "embedding backward: dy ", dy.str(), " for a table ", table_shape.str());
  check_device(ids, dy.device(), "embedding ids");
  set_current_device(dy.device());
  Tensor dt = Tensor::empty(table_shape, dy.dtype(), dy.device());
  cuda::embedding_backward(dy.raw(), ids.data<int64_t>(), dt.raw(), dy.dtype(), ids.numel(), table_shape[0],
                           table_shape[1], current_stream());
  return dt;
}

// ---- resampling ---------------------------------------------------------------------------------
namespace {

Tensor resample(const Tensor& in, bool to_large, const char* what,
                void (*launch)(const void*, void*, DType, int64_t, int64_t, int64_t, int64_t, void*)) {
  check_act(in, what);
  DF_CHECK(in.dim() == 4, what, ": expected (B,H,W,C), got ", in.str());
  const int64_t B = in.size(0), H = in.size(1), W = in.size(2), C = in.size(3);
  if (!to_large) DF_CHECK(H % 2 == 0 && W % 2 == 0, what, ": H and W must be even, got ", in.shape().str());
  set_current_device(in.device());
  const Shape out = to_large ? Shape{B, 2 * H, 2 * W, C} : Shape{B, H / 2, W / 2, C};
  Tensor y = Tensor::empty(out, in.dtype(), in.device());
  const Shape& small = to_large ? in.shape() : out;
  launch(in.raw(), y.raw(), in.dtype(), small[0], small[1], small[2], small[3], current_stream());
  return y;
}

}  // namespace

Tensor upsample_nearest2x_forward(const Tensor& x) {
  return resample(x, true, "upsample_nearest2x", cuda::upsample_nearest2x_forward);
}
Tensor upsample_nearest2x_backward(const Tensor& g) {
  return resample(g, false, "upsample_nearest2x backward", cuda::upsample_nearest2x_backward);
}
Tensor avg_pool2x_forward(const Tensor& x) { return resample(x, false, "avg_pool2x", cuda::avg_pool2x_forward); }
Tensor avg_pool2x_backward(const Tensor& g) { return resample(g, true, "avg_pool2x backward", cuda::avg_pool2x_backward); }

// ---- concat / slice along the last dim --------------------------------------------------------------

Tensor concat_last_forward(const std::vector<Tensor>& xs) {
  DF_CHECK(!xs.empty(), "concat_last of nothing");
  Shape out = xs[0].shape();
  int64_t total = 0;
  for (const Tensor& t : xs) {
    DF_CHECK(t.defined() && t.dim() >= 1 && t.device() == xs[0].device() && t.dtype() == xs[0].dtype(),
             "concat_last: ", t.str(), " with ", xs[0].str());
    Shape lead = t.shape();
    lead[-1] = out[-1];
    DF_CHECK(lead == out, "concat_last: leading dims differ: ", t.shape().str(), " vs ", xs[0].shape().str());
    total += t.size(-1);
  }
  out[-1] = total;
  set_current_device(xs[0].device());
  Tensor y = Tensor::empty(out, xs[0].dtype(), xs[0].device());
  const int64_t rows = total ? out.numel() / total : 0;
  const int64_t es = static_cast<int64_t>(dtype_size(y.dtype()));
  int64_t off = 0;
  for (const Tensor& t : xs) {
    const int64_t w = t.size(-1);
    cuda::copy_rows(static_cast<char*>(y.raw()) + off * es, total * es, t.raw(), w * es, rows, w * es,
                    current_stream());
    off += w;
  }
  return y;
}

Tensor slice_last_forward(const Tensor& x, int64_t begin, int64_t end) {
  DF_CHECK(x.defined() && x.dim() >= 1, "slice_last of ", x.str());
  const int64_t C = x.size(-1);
  DF_CHECK(0 <= begin && begin <= end && end <= C, "slice_last [", begin, ", ", end, ") of ", x.shape().str());
  set_current_device(x.device());
  Shape s = x.shape();
  s[-1] = end - begin;
  Tensor y = Tensor::empty(s, x.dtype(), x.device());
  const int64_t es = static_cast<int64_t>(dtype_size(x.dtype()));
  const int64_t rows = C ? x.numel() / C : 0;
  cuda::copy_rows(y.raw(), (end - begin) * es, static_cast<const char*>(x.raw()) + begin * es, C * es, rows,
                  (end - begin) * es, current_stream());
  return y;
}

Tensor slice_last_backward(const Tensor& g, int64_t total, int64_t begin) {
  DF_CHECK(g.defined() && g.dim() >= 1, "slice_last backward of ", g.str());
  const int64_t c = g.size(-1);
  DF_CHECK(0 <= begin && begin + c <= total, "slice_last backward: gradient ", g.str(), " at ", begin, " of ", total);
  set_current_device(g.device());
  Shape s = g.shape();
  s[-1] = total;
  Tensor dx = Tensor::zeros(s, g.dtype(), g.device());
  const int64_t es = static_cast<int64_t>(dtype_size(g.dtype()));
  const int64_t rows = c ? g.numel() / c : 0;
  cuda::copy_rows(static_cast<char*>(dx.raw()) + begin * es, total * es, g.raw(), c * es, rows, c * es,
                  current_stream());
  return dx;
}

// ---- sampler step ---------------------------------------------------------------------------------

void sampler_step(const SamplerStepParams& p, const Tensor& z, const Tensor& model_out, const Tensor& model_out_uncond,
                  Tensor& z_next) {
  for (const Tensor* t : {&z, &model_out, const_cast<const Tensor*>(&z_next)}) {
    DF_CHECK(t->defined() && t->dtype() == DType::f32 && t->device().is_cuda(), "sampler_step: f32 GPU tensors, got ",
             t->defined() ? t->str() : std::string("undefined"));
    check_device(*t, z.device(), "sampler_step");
  }
  check_same_shape(z, z_next, "sampler_step");
  if (model_out_uncond.defined()) {
    check_same_shape(model_out, model_out_uncond, "sampler_step guidance");
    check_device(model_out_uncond, z.device(), "sampler_step");
  }
  const int64_t B = z.size(0), N = z.numel() / std::max<int64_t>(B, 1);
  DF_CHECK(model_out.numel() == (p.learned_variance ? 2 : 1) * z.numel(), "sampler_step: model output ",
           model_out.str(), " for z ", z.str());
  set_current_device(z.device());
  cuda::sampler_step(p, z.data<float>(), model_out.data<float>(),
                     model_out_uncond.defined() ? model_out_uncond.data<float>() : nullptr, z_next.data<float>(), N,
                     static_cast<int>(B), current_stream());
}

}  // namespace diffuse::kernels::gpu
