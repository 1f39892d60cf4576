// autograd/elementwise.cpp: Var-level elementwise ops, reductions and dropout; each backward
// rule sits next to its forward and calls kernels/elementwise.h.
#include "autograd/elementwise.h"

#include <algorithm>
#include <utility>

#include "autograd/autocast.h"
#include "kernels/elementwise.h"

namespace diffuse::ag {

namespace {

using kernels::BinaryOp;
using kernels::UnaryOp;

// add/sub need only the operands' shapes in backward; mul/div keep the operands (views, no copy).
Var binary(BinaryOp op, const char* name, const Var& a_in, const Var& b_in) {
  // Mixed float dtypes (bf16 activations meeting an f32 target) compute in the wider one.
  Var a = a_in, b = b_in;
  promote(a, b);
  const Tensor& av = a.value();
  const Tensor& bv = b.value();
  Tensor out = kernels::binary_forward(op, av, bv);
  const bool na = a.requires_grad(), nb = b.requires_grad();
  if (op == BinaryOp::add || op == BinaryOp::sub) {
    return record(name, std::move(out), {a, b}, [op, sa = av.shape(), sb = bv.shape(), na, nb](const Tensor& g) {
      Tensor da, db;
      if (na) da = kernels::sum_to(g, sa);
      if (nb) db = op == BinaryOp::add ? kernels::sum_to(g, sb) : kernels::mul_scalar(kernels::sum_to(g, sb), -1.0);
      // x + x: one buffer must not become both gradients (in-place gradient updates would see it twice).
      if (na && nb && da.same_storage(db)) db = db.clone();
      return std::vector<Tensor>{da, db};
    });
  }
  return record(name, std::move(out), {a, b}, [op, av, bv, na, nb](const Tensor& g) {
    kernels::BinaryGrads r = kernels::binary_backward(op, g, av, bv, na, nb);
    return std::vector<Tensor>{r.da, r.db};
  });
}

Var unary(UnaryOp op, const Var& x) {
  Tensor xv = x.value();
  Tensor y = kernels::unary_forward(op, xv);
  return record(kernels::unary_name(op), std::move(y), {x},
                [op, xv](const Tensor& g) { return std::vector<Tensor>{kernels::unary_backward(op, g, xv)}; });
}

Shape keepdim_of(const Shape& s, const std::vector<int>& axes) {
  Shape k = s;
  for (int a : axes) k[a < 0 ? a + s.rank() : a] = 1;
  return k;
}

}  // namespace

Var add(const Var& a, const Var& b) { return binary(BinaryOp::add, "add", a, b); }
Var sub(const Var& a, const Var& b) { return binary(BinaryOp::sub, "sub", a, b); }
Var mul(const Var& a, const Var& b) { return binary(BinaryOp::mul, "mul", a, b); }
Var div(const Var& a, const Var& b) { return binary(BinaryOp::div, "div", a, b); }

Var add_scalar(const Var& a, double s) {
  return record("add_scalar", kernels::add_scalar(a.value(), s), {a},
                [](const Tensor& g) { return std::vector<Tensor>{g}; });
}

Var mul_scalar(const Var& a, double s) {
  return record("mul_scalar", kernels::mul_scalar(a.value(), s), {a},
                [s](const Tensor& g) { return std::vector<Tensor>{kernels::mul_scalar(g, s)}; });
}

Var silu(const Var& x) { return unary(UnaryOp::silu, x); }
Var sigmoid(const Var& x) { return unary(UnaryOp::sigmoid, x); }
Var softplus(const Var& x) { return unary(UnaryOp::softplus, x); }
Var exp(const Var& x) { return unary(UnaryOp::exp, x); }
Var log(const Var& x) { return unary(UnaryOp::log, x); }
Var tanh(const Var& x) { return unary(UnaryOp::tanh, x); }
Var square(const Var& x) { return unary(UnaryOp::square, x); }
Var sqrt(const Var& x) { return unary(UnaryOp::sqrt, x); }
Var neg(const Var& x) { return mul_scalar(x, -1.0); }

// d sum / dx = the output gradient repeated over the summed axes (at their keepdim places).
Var sum(const Var& x, std::vector<int> axes, bool keepdim) {
  Tensor out = kernels::sum(x.value(), axes, keepdim);
  return record("sum", std::move(out), {x}, [xs = x.shape(), k = keepdim_of(x.shape(), axes)](const Tensor& g) {
    return std::vector<Tensor>{kernels::broadcast_to(g.reshape(k), xs)};
  });
}

Var mean(const Var& x, std::vector<int> axes, bool keepdim) {
  Shape k = keepdim_of(x.shape(), axes);
  const double inv = static_cast<double>(k.numel()) / static_cast<double>(std::max<int64_t>(x.numel(), 1));
  Tensor out = kernels::mean(x.value(), axes, keepdim);
  return record("mean", std::move(out), {x}, [xs = x.shape(), k, inv](const Tensor& g) {
    Tensor d = kernels::broadcast_to(g.reshape(k), xs);
    kernels::scale_(d, inv);
    return std::vector<Tensor>{d};
  });
}

Var sum_all(const Var& x) {
  return record("sum_all", kernels::sum_all(x.value()), {x},
                [xs = x.shape()](const Tensor& g) { return std::vector<Tensor>{kernels::broadcast_to(g, xs)}; });
}

Var mean_all(const Var& x) {
  const double inv = 1.0 / static_cast<double>(std::max<int64_t>(x.numel(), 1));
  return record("mean_all", kernels::mean_all(x.value()), {x}, [xs = x.shape(), inv](const Tensor& g) {
    Tensor d = kernels::broadcast_to(g, xs);
    kernels::scale_(d, inv);
    return std::vector<Tensor>{d};
  });
}

Var dropout(const Var& x, float p, uint64_t seed, uint64_t offset, bool training) {
  if (!training || p == 0.f) return x;
  return record("dropout", kernels::dropout_forward(x.value(), p, seed, offset), {x}, [p, seed, offset](const Tensor& g) {
    return std::vector<Tensor>{kernels::dropout_backward(g, p, seed, offset)};
  });
}

}  // namespace diffuse::ag
