// kernels/elementwise.cpp: the elementwise ops, reductions and in-place helpers on Tensors
// (kernels/elementwise.h), on the tensors' device: the cpu fast path of kernels/cpu/elementwise.cpp
// or the GPU's (kernels/cuda/elementwise_cuda.cpp, over elementwise.cu and reduce.cu). The
// composite ops (the binary backward, the means) are written once here on top of them.
#include "kernels/elementwise.h"

#include <algorithm>

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/cuda/elementwise.h"

namespace diffuse::kernels {

namespace {

// The profile's names (core/profile.h), one per op and direction.
const char* binary_profile_name(BinaryOp op) {
  static const char* const names[] = {"add", "sub", "mul", "div"};
  return names[static_cast<int>(op)];
}

const char* unary_profile_name(UnaryOp op, bool backward) {
  static const char* const fwd[] = {"silu_forward", "sigmoid_forward", "softplus_forward", "exp_forward", "log_forward",
                                    "tanh_forward", "square_forward", "sqrt_forward", "neg_forward"};
  static const char* const bwd[] = {"silu_backward", "sigmoid_backward", "softplus_backward",
                                    "exp_backward",  "log_backward",     "tanh_backward",
                                    "square_backward", "sqrt_backward",  "neg_backward"};
  return (backward ? bwd : fwd)[static_cast<int>(op)];
}

}  // namespace

Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b) {
  DF_PROFILE(binary_profile_name(op));
  DF_ON_CUDA(a.device(), cuda::binary_forward(op, a, b));
  return cpu::binary_forward(op, a, b);
}

Tensor add(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::add, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::sub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::mul, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary_forward(BinaryOp::div, a, b); }

Tensor sum_to(const Tensor& g, const Shape& shape) {
  DF_PROFILE("sum_to");
  DF_ON_CUDA(g.device(), cuda::sum_to(g, shape));
  return cpu::sum_to(g, shape);
}

Tensor broadcast_to(const Tensor& x, const Shape& shape) {
  DF_PROFILE("broadcast_to");
  DF_ON_CUDA(x.device(), cuda::broadcast_to(x, shape));
  return cpu::broadcast_to(x, shape);
}

// d(a+b) = (dy, dy); d(a-b) = (dy, -dy); d(ab) = (dy b, dy a); d(a/b) = (dy / b, -dy a / b^2),
// each summed back to its operand's shape.
BinaryGrads binary_backward(BinaryOp op, const Tensor& dy, const Tensor& a, const Tensor& b, bool need_da,
                            bool need_db) {
  DF_PROFILE("binary_backward");
  // add hands dy itself on where no sum was needed; both operands of x + x would then share one
  // buffer as their gradients, which an optimizer scaling gradients in place would scale twice.
  auto own = [&](Tensor t) { return t.same_storage(dy) && need_da && need_db ? t.clone() : t; };
  DF_CHECK(dy.device() == a.device() && dy.device() == b.device(), "binary backward: ", dy.str(), " for ", a.str(),
           " and ", b.str());
  DF_CHECK(dy.shape() == broadcast_shape(a.shape(), b.shape()), "binary backward: gradient ", dy.str(), " for ",
           a.str(), " and ", b.str());
  BinaryGrads g;
  switch (op) {
    case BinaryOp::add:
      if (need_da) g.da = own(sum_to(dy, a.shape()));
      if (need_db) g.db = sum_to(dy, b.shape());
      break;
    case BinaryOp::sub:
      if (need_da) g.da = sum_to(dy, a.shape());
      if (need_db) g.db = mul_scalar(sum_to(dy, b.shape()), -1.0);
      break;
    case BinaryOp::mul:
      if (need_da) g.da = sum_to(mul(dy, b), a.shape());
      if (need_db) g.db = sum_to(mul(dy, a), b.shape());
      break;
    case BinaryOp::div: {
      Tensor q = div(dy, b);  // dy / b, out's shape
      if (need_db) g.db = sum_to(mul_scalar(div(mul(q, a), b), -1.0), b.shape());
      if (need_da) g.da = sum_to(q, a.shape());
      break;
    }
  }
  return g;
}

Tensor unary_forward(UnaryOp op, const Tensor& x) {
  DF_PROFILE(unary_profile_name(op, false));
  DF_ON_CUDA(x.device(), cuda::unary_forward(op, x));
  return cpu::unary_forward(op, x);
}

Tensor unary_backward(UnaryOp op, const Tensor& dy, const Tensor& x) {
  DF_PROFILE(unary_profile_name(op, true));
  DF_ON_CUDA(x.device(), cuda::unary_backward(op, dy, x));
  return cpu::unary_backward(op, dy, x);
}

Tensor add_scalar(const Tensor& x, double s) {
  DF_PROFILE("add_scalar");
  DF_ON_CUDA(x.device(), cuda::affine(x, 1.0, s));
  return cpu::add_scalar(x, s);
}

Tensor mul_scalar(const Tensor& x, double s) {
  DF_PROFILE("mul_scalar");
  DF_ON_CUDA(x.device(), cuda::affine(x, s, 0.0));
  return cpu::mul_scalar(x, s);
}

void axpby(double a, const Tensor& x, double b, Tensor& y) {
  DF_PROFILE("axpby");
  DF_ON_CUDA(y.device(), cuda::axpby(a, x, b, y));
  return cpu::axpby(a, x, b, y);
}

void add_(Tensor& y, const Tensor& x, double alpha) {
  DF_PROFILE("add_");
  DF_ON_CUDA(y.device(), cuda::axpby(alpha, x, 1.0, y));
  return cpu::add_(y, x, alpha);
}

void scale_(Tensor& y, double s) {
  DF_PROFILE("scale_");
  DF_ON_CUDA(y.device(), cuda::scale_(y, s));
  return cpu::scale_(y, s);
}

Tensor sum(const Tensor& x, const std::vector<int>& axes, bool keepdim) {
  DF_PROFILE("sum");
  DF_ON_CUDA(x.device(), cuda::sum(x, axes, keepdim));
  return cpu::sum(x, axes, keepdim);
}

Tensor mean(const Tensor& x, const std::vector<int>& axes, bool keepdim) {
  const double inv = 1.0 / static_cast<double>(std::max<int64_t>(reduction_count(x.shape(), axes), 1));
  // One pass on the GPU: the kernel's final write scales the sums.
  DF_ON_CUDA(x.device(), cuda::sum(x, axes, keepdim, inv));
  Tensor out = sum(x, axes, keepdim);
  scale_(out, inv);
  return out;
}

Tensor sum_all(const Tensor& x) {
  DF_PROFILE("sum_all");
  DF_ON_CUDA(x.device(), cuda::sum(x.reshape({x.numel()}), {0}, false));
  return cpu::sum_all(x);
}

Tensor mean_all(const Tensor& x) {
  const double inv = 1.0 / static_cast<double>(std::max<int64_t>(x.numel(), 1));
  DF_ON_CUDA(x.device(), cuda::sum(x.reshape({x.numel()}), {0}, false, inv));
  Tensor out = sum_all(x);
  scale_(out, inv);
  return out;
}

Tensor dropout_forward(const Tensor& x, float p, uint64_t seed, uint64_t offset) {
  DF_PROFILE("dropout_forward");
  DF_ON_CUDA(x.device(), cuda::dropout(x, p, seed, offset));
  return cpu::dropout(x, p, seed, offset, "dropout");
}

// The mask is a function of (seed, offset, i) only, so backward is the same map applied to dy.
Tensor dropout_backward(const Tensor& dy, float p, uint64_t seed, uint64_t offset) {
  DF_PROFILE("dropout_backward");
  DF_ON_CUDA(dy.device(), cuda::dropout(dy, p, seed, offset));
  return cpu::dropout(dy, p, seed, offset, "dropout backward");
}

}  // namespace diffuse::kernels
