// kernels/cuda/elementwise_cuda.cpp: the Tensor-level elementwise ops and reductions on a GPU
// (kernels/cuda/elementwise.h), over the launchers of kernels/cuda/elementwise.cu and reduce.cu.
// Each function checks what the launcher cannot (devices, dtypes, shapes), allocates its output
// from the caching allocator and launches on the current stream; nothing waits for the device.
#include <algorithm>

#include "core/allocator.h"
#include "core/check.h"
#include "core/graph.h"
#include "core/stream.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/reduce.h"

namespace diffuse::cuda {

using kernels::BinaryOp;
using kernels::broadcast_shape;
using kernels::Dims;
using kernels::ReduceOp;
using kernels::UnaryOp;
using kernels::unary_name;

namespace {

Dims dims_of(const Shape& s) {
  Dims d;
  d.rank = s.rank();
  for (int i = 0; i < s.rank(); ++i) d.d[i] = s[i];
  return d;
}

// The activation dtypes of the GPU path; everything else is a caller's mistake worth a message.
void check_float(const Tensor& t, const char* what) {
  DF_CHECK(t.defined(), what, ": undefined tensor");
  DF_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, what, " on ", t.device().str(), ": ", t.str(),
           " (f32 or bf16 expected)");
}

void check_pair(const Tensor& a, const Tensor& b, const char* what) {
  check_float(a, what);
  check_float(b, what);
  check_device(b, a.device(), what);
  DF_CHECK(a.dtype() == b.dtype(), what, ": dtypes differ: ", a.str(), " and ", b.str(),
           " (cast one first; autograd does under mixed precision)");
}

// Scratch for one launch from the caching allocator: freed (returned to the cache) when the
// caller's scope ends, which the stream orders after the launch that used it.
Tensor workspace(size_t bytes, Device d) {
  return Tensor::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, DType::u8, d);
}

// Sum over a bitmask of axes of x into out (f32 or bf16), times scale.
void reduce_into(const Tensor& x, unsigned mask, double scale, Tensor& out) {
  const Dims d = dims_of(x.shape());
  Tensor ws = workspace(cuda::reduce_sum_workspace_bytes(d, mask), x.device());
  cuda::reduce_sum(x.numel() ? x.raw() : nullptr, x.dtype(), d, mask, static_cast<float>(scale), out.raw(),
                   out.dtype(), ws.raw(), current_stream());
}

}  // namespace

Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b) {
  check_pair(a, b, "binary op");
  set_current_device(a.device());
  Tensor out = Tensor::empty(broadcast_shape(a.shape(), b.shape()), a.dtype(), a.device());
  cuda::binary_forward(op, a.raw(), dims_of(a.shape()), b.raw(), dims_of(b.shape()), out.raw(), a.dtype(),
                       current_stream());
  return out;
}

// The axes of g along which `shape` (right-aligned) was broadcast: the leading dims `shape` lacks
// and those where it has size 1 and g does not.
Tensor sum_to(const Tensor& g, const Shape& shape) {
  check_float(g, "sum_to");
  if (g.shape() == shape) return g;
  DF_CHECK(broadcast_shape(shape, g.shape()) == g.shape(), "sum_to: ", shape.str(), " does not broadcast to ",
           g.shape().str());
  set_current_device(g.device());
  unsigned mask = 0;
  const int lead = g.dim() - shape.rank();
  for (int d = 0; d < g.dim(); ++d)
    if (d < lead || (shape[d - lead] == 1 && g.size(d) != 1)) mask |= 1u << d;
  Tensor out = Tensor::empty(shape, g.dtype(), g.device());
  reduce_into(g, mask, 1.0, out);
  return out;
}

Tensor broadcast_to(const Tensor& x, const Shape& shape) {
  check_float(x, "broadcast_to");
  set_current_device(x.device());
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  cuda::broadcast_to(x.raw(), dims_of(x.shape()), out.raw(), dims_of(shape), x.dtype(), current_stream());
  return out;
}

Tensor unary_forward(UnaryOp op, const Tensor& x) {
  check_float(x, unary_name(op));
  set_current_device(x.device());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  cuda::unary_forward(op, x.raw(), y.raw(), x.dtype(), x.numel(), current_stream());
  return y;
}

Tensor unary_backward(UnaryOp op, const Tensor& dy, const Tensor& x) {
  check_pair(x, dy, unary_name(op));
  check_same_shape(dy, x, unary_name(op));
  set_current_device(x.device());
  Tensor dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  cuda::unary_backward(op, x.raw(), dy.raw(), dx.raw(), x.dtype(), x.numel(), false, current_stream());
  return dx;
}

Tensor affine(const Tensor& x, double a, double b) {
  check_float(x, "affine");
  set_current_device(x.device());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  cuda::affine(x.raw(), y.raw(), static_cast<float>(a), static_cast<float>(b), x.dtype(), x.numel(), current_stream());
  return y;
}

void axpby(double a, const Tensor& x, double b, Tensor& y) {
  check_pair(y, x, "axpby");
  check_same_shape(x, y, "axpby");
  set_current_device(y.device());
  cuda::axpby(static_cast<float>(a), x.raw(), static_cast<float>(b), y.raw(), y.dtype(), y.numel(), current_stream());
}

void scale_(Tensor& y, double s) {
  check_float(y, "scale_");
  set_current_device(y.device());
  cuda::affine(y.raw(), y.raw(), static_cast<float>(s), 0.f, y.dtype(), y.numel(), current_stream());
}

Tensor sum(const Tensor& x, const std::vector<int>& axes, bool keepdim, double scale) {
  check_float(x, "sum");
  set_current_device(x.device());
  unsigned mask = 0;
  for (int a : axes) {
    const int d = a < 0 ? a + x.dim() : a;
    DF_CHECK(d >= 0 && d < x.dim(), "sum: axis ", a, " out of range for ", x.str());
    DF_CHECK(!((mask >> d) & 1u), "sum: axis ", a, " given twice");
    mask |= 1u << d;
  }
  std::vector<int64_t> dims;
  for (int d = 0; d < x.dim(); ++d) {
    if (!((mask >> d) & 1u)) dims.push_back(x.size(d));
    else if (keepdim) dims.push_back(1);
  }
  if (dims.empty()) dims.push_back(1);  // a Tensor has no rank-0 form
  Tensor out = Tensor::empty(Shape(dims), x.dtype(), x.device());
  reduce_into(x, mask, scale, out);
  return out;
}

Tensor dropout(const Tensor& x, float p, uint64_t seed, uint64_t offset) {
  check_float(x, "dropout");
  set_current_device(x.device());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  cuda::dropout(x.raw(), y.raw(), x.dtype(), x.numel(), p, seed, offset, philox_seed_xor(), current_stream());
  return y;
}

}  // namespace diffuse::cuda
