// autograd/autocast.cpp: the mixed-precision policy of autograd/autocast.h.
#include "autograd/autocast.h"

#include <algorithm>

#include "core/check.h"
#include "core/stream.h"

#if defined(DIFFUSE_HAVE_CUDA)
#include "core/tensor_cuda.h"
#endif

namespace diffuse::ag {

namespace {
thread_local bool t_bf16 = false;

bool is_float(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f16 || t == DType::f64; }

// dst (bf16, same numel) = src (f32) converted, in place on the device: no temporary tensor.
void convert_into(const Tensor& src, Tensor& dst) {
  DF_CHECK(src.numel() == dst.numel() && src.device() == dst.device(), "bf16 copy: ", src.str(), " into ", dst.str());
#if defined(DIFFUSE_HAVE_CUDA)
  if (src.device().is_cuda()) {
    set_current_device(src.device());
    cuda::tensor_cast(src.raw(), src.dtype(), dst.raw(), dst.dtype(), src.numel(), current_stream());
    return;
  }
#endif
  dst.copy_(src.to(dst.dtype()).reshape(dst.shape()));
}
}  // namespace

Autocast::Autocast(bool bf16) : prev_(t_bf16) { t_bf16 = bf16; }
Autocast::~Autocast() { t_bf16 = prev_; }
bool autocast_enabled() { return t_bf16; }

Var cast(const Var& x, DType t) {
  if (!x.defined() || x.dtype() == t) return x;
  const DType src = x.dtype();
  return record("cast", x.value().to(t), {x}, [src](const Tensor& g) { return std::vector<Tensor>{g.to(src)}; });
}

Var autocast(const Var& x) {
  if (!t_bf16 || !x.defined() || x.dtype() != DType::f32 || !x.device().is_cuda()) return x;
  const Tensor& lowp = x.impl()->lowp;
  if (lowp.defined() && lowp.shape() == x.shape() && lowp.device() == x.device()) {
    // The parameter's copy stands in for it; its gradient comes back widened to f32.
    return record("autocast", lowp, {x}, [](const Tensor& g) { return std::vector<Tensor>{g.to(DType::f32)}; });
  }
  return cast(x, DType::bf16);
}

void promote(Var& a, Var& b) {
  if (!a.defined() || !b.defined() || a.dtype() == b.dtype()) return;
  if (!is_float(a.dtype()) || !is_float(b.dtype())) return;
  const DType wide = dtype_size(a.dtype()) >= dtype_size(b.dtype()) ? a.dtype() : b.dtype();
  a = cast(a, wide);
  b = cast(b, wide);
}

Bf16Weights::Bf16Weights(const std::vector<Var>& params, const std::vector<int64_t>& offsets, int64_t total)
    : params_(params) {
  DF_CHECK(params.size() == offsets.size(), "Bf16Weights: ", params.size(), " parameters, ", offsets.size(),
           " offsets");
  DF_CHECK(!params.empty(), "Bf16Weights of no parameters");
  const Device d = params[0].device();
  buffer_ = Tensor::zeros({std::max<int64_t>(total, 1)}, DType::bf16, d);
  for (size_t i = 0; i < params_.size(); ++i) {
    const Var& p = params_[i];
    DF_CHECK(p.dtype() == DType::f32 && p.device() == d, "Bf16Weights: parameter ", i, " is ", p.value().str());
    DF_CHECK(offsets[i] >= 0 && offsets[i] + p.numel() <= total, "Bf16Weights: parameter ", i, " at ", offsets[i],
             " past ", total);
    p.impl()->lowp = buffer_.slice(offsets[i], offsets[i] + p.numel()).reshape(p.shape());
  }
  refresh();
}

Bf16Weights::~Bf16Weights() {
  for (const Var& p : params_)
    if (p.impl() && p.impl()->lowp.same_storage(buffer_)) p.impl()->lowp = Tensor();
}

void Bf16Weights::refresh() {
  for (const Var& p : params_) refresh_lowp(p);
}

void refresh_lowp(const Var& p) {
  if (!p.defined() || !p.impl()->lowp.defined()) return;
  convert_into(p.value(), p.impl()->lowp);
}

}  // namespace diffuse::ag
