// kernels/cuda/group_norm_cuda.cpp: the Tensor-level GroupNorm with AdaGN scale/shift and SiLU over
// the launchers of kernels/cuda/group_norm.cu: statistics and parameter gradients in f32. Checks
// what the launchers cannot, allocates outputs and workspaces from the caching allocator and
// launches on the current stream; nothing here waits for the device.
#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/group_norm.h"
#include "kernels/cuda/tensor_args.h"

namespace diffuse::cuda {

using namespace args;
using kernels::GroupNormResult;
using kernels::GroupNormGrads;
using kernels::GroupNormOptions;

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

}  // namespace diffuse::cuda
