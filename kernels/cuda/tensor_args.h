// kernels/cuda/tensor_args.h: what the Tensor-level GPU ops (the end of each kernels/cuda/<op>.cu)
// share: the checks of their tensor arguments, workspaces from the caching allocator, and the f32 views
// of optional parameters that the kernels read.
#pragma once

#include <algorithm>
#include <cstddef>

#include "core/check.h"
#include "core/tensor.h"

namespace diffuse::cuda::args {

// An activation on a GPU: f32 or bf16.
inline void check_act(const Tensor& t, const char* what) {
  DF_CHECK(t.defined(), what, ": undefined tensor");
  DF_CHECK(t.device().is_cuda(), what, ": ", t.str(), " is not on a GPU");
  DF_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, what, " on ", t.device().str(), ": ", t.str(),
           " (f32 or bf16 expected)");
}

// An activation on ref's device with ref's dtype.
inline void check_like(const Tensor& t, const Tensor& ref, const char* what) {
  check_act(t, what);
  check_device(t, ref.device(), what);
  DF_CHECK(t.dtype() == ref.dtype(), what, ": dtypes differ: ", t.str(), " and ", ref.str());
}

inline Tensor workspace(size_t bytes, Device d) {
  return Tensor::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, DType::u8, d);
}

// An optional parameter as the f32 the kernels read (a copy only when it is not f32 already).
inline Tensor as_f32(const Tensor& t) { return t.defined() ? t.to(DType::f32) : Tensor(); }
inline const float* f32_or_null(const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; }
// A gradient computed in f32 returned in the dtype of the input it belongs to.
inline Tensor in_dtype_of(const Tensor& g, const Tensor& input) { return g.defined() ? g.to(input.dtype()) : g; }

}  // namespace diffuse::cuda::args
