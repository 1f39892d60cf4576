// kernels/cuda/learned_variance_vlb_cuda.cpp: the Tensor-level learned-variance VLB term on a GPU
// (kernels/cuda/learned_variance_vlb.h): checks, f32 copies of bf16 inputs, the launch on the
// current stream.
#include <utility>

#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/learned_variance_vlb.h"

namespace diffuse::cuda {

std::pair<Tensor, Tensor> learned_variance_vlb_forward(const Tensor& table, const Tensor& steps, const Tensor& x0,
                                                       const Tensor& xt, const Tensor& pred, const Tensor& raw) {
  DF_CHECK(raw.defined() && raw.dim() >= 2, "learned_variance_vlb on cuda: raw variance ",
           raw.defined() ? raw.str() : std::string("undefined"), " (expected (B, ...))");
  const int64_t B = raw.size(0), n = raw.numel() / B;
  DF_CHECK(table.dtype() == DType::i64 && table.numel() % kLearnedVarianceVlbConstants == 0 && table.numel() > 0,
           "learned_variance_vlb on cuda: constants ", table.str());
  DF_CHECK(steps.dtype() == DType::f32 && steps.numel() == B, "learned_variance_vlb on cuda: steps ", steps.str(),
           " for a batch of ", B);
  for (const Tensor* t : {&x0, &xt, &pred})
    DF_CHECK(t->shape() == raw.shape(), "learned_variance_vlb on cuda: ", t->str(), " against raw ", raw.str());
  for (const Tensor* t : {&table, &steps, &x0, &xt, &pred})
    DF_CHECK(t->device() == raw.device(), "learned_variance_vlb on cuda: ", t->str(), " on ", t->device().str(),
             ", raw on ", raw.device().str());
  set_current_device(raw.device());
  const Tensor x = x0.to(DType::f32), z = xt.to(DType::f32), e = pred.to(DType::f32), r = raw.to(DType::f32);
  Tensor value = Tensor::empty({B}, DType::f32, raw.device());
  Tensor dvalue = Tensor::empty(raw.shape(), DType::f32, raw.device());
  cuda::learned_variance_vlb_forward(reinterpret_cast<const double*>(table.data<int64_t>()),
                                     static_cast<int>(table.numel() / kLearnedVarianceVlbConstants),
                                     steps.data<float>(), x.data<float>(), z.data<float>(), e.data<float>(),
                                     r.data<float>(), value.data<float>(), dvalue.data<float>(), B, n,
                                     current_stream());
  return {value, dvalue};
}

}  // namespace diffuse::cuda
