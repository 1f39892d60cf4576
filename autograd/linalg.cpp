// The Var-level ops of autograd/linalg.h: each forward calls its kernel and records the backward
// rule beside it. Saved tensors are the inputs the rule needs (values, not copies: Tensors share
// storage), and gradients are computed only for the inputs that require them. Under mixed precision
// the products take their operands through autocast() (autograd/autocast.h).
#include "autograd/linalg.h"

#include "autograd/autocast.h"

#include "kernels/concat.h"
#include "kernels/conv2d.h"
#include "kernels/matmul.h"
#include "kernels/resample.h"

namespace diffuse::ag {

Var matmul(const Var& a_in, const Var& b_in) {
  const Var a = autocast(a_in), b = autocast(b_in);
  Tensor av = a.value(), bv = b.value();
  bool na = a.requires_grad(), nb = b.requires_grad();
  return record("matmul", kernels::matmul_forward(av, bv), {a, b}, [av, bv, na, nb](const Tensor& g) {
    kernels::MatmulGrads r = kernels::matmul_backward(g, av, bv, na, nb);
    return std::vector<Tensor>{r.da, r.db};
  });
}

Var linear(const Var& x_in, const Var& w_in, const Var& b_in) {
  const Var x = autocast(x_in), w = autocast(w_in), b = autocast(b_in);
  Tensor xv = x.value(), wv = w.value();
  Tensor bv = b.defined() ? b.value() : Tensor();
  bool nx = x.requires_grad(), nw = w.requires_grad(), nb = b.defined() && b.requires_grad();
  std::vector<Var> inputs{x, w};
  if (b.defined()) inputs.push_back(b);
  bool has_b = b.defined();
  return record("linear", kernels::linear_forward(xv, wv, bv), inputs, [xv, wv, nx, nw, nb, has_b](const Tensor& g) {
    kernels::LinearGrads r = kernels::linear_backward(g, xv, wv, nx, nw, nb);
    std::vector<Tensor> out{r.dx, r.dw};
    if (has_b) out.push_back(r.db);
    return out;
  });
}

Var conv2d(const Var& x_in, const Var& w_in, const Var& b_in, Conv2dOptions opt) {
  const Var x = autocast(x_in), w = autocast(w_in), b = autocast(b_in);
  Tensor xv = x.value(), wv = w.value();
  Tensor bv = b.defined() ? b.value() : Tensor();
  kernels::Conv2dParams p{opt.stride, opt.padding};
  bool nx = x.requires_grad(), nw = w.requires_grad(), nb = b.defined() && b.requires_grad(), has_b = b.defined();
  std::vector<Var> inputs{x, w};
  if (has_b) inputs.push_back(b);
  return record("conv2d", kernels::conv2d_forward(xv, wv, bv, p), inputs,
                [xv, wv, p, nx, nw, nb, has_b](const Tensor& g) {
                  kernels::Conv2dGrads r = kernels::conv2d_backward(g, xv, wv, p, nx, nw, nb);
                  std::vector<Tensor> out{r.dx, r.dw};
                  if (has_b) out.push_back(r.db);
                  return out;
                });
}

Var upsample_nearest2x(const Var& x) {
  return record("upsample_nearest2x", kernels::upsample_nearest2x_forward(x.value()), {x},
                [](const Tensor& g) { return std::vector<Tensor>{kernels::upsample_nearest2x_backward(g)}; });
}

Var avg_pool2x(const Var& x) {
  return record("avg_pool2x", kernels::avg_pool2x_forward(x.value()), {x},
                [](const Tensor& g) { return std::vector<Tensor>{kernels::avg_pool2x_backward(g)}; });
}

Var concat_last(const std::vector<Var>& xs_in) {
  // Mixed float dtypes concatenate in the widest (a skip connection kept in f32 meeting bf16).
  std::vector<Var> xs = xs_in;
  for (size_t i = 1; i < xs.size(); ++i) promote(xs[0], xs[i]);
  for (size_t i = 1; i < xs.size(); ++i) xs[i] = cast(xs[i], xs[0].dtype());
  std::vector<Tensor> vs;
  std::vector<int64_t> widths;
  for (const Var& v : xs) {
    vs.push_back(v.value());
    widths.push_back(v.size(-1));
  }
  return record("concat_last", kernels::concat_last_forward(vs), xs,
                [widths](const Tensor& g) { return kernels::concat_last_backward(g, widths); });
}

Var slice_last(const Var& x, int64_t begin, int64_t end) {
  int64_t total = x.size(-1);
  return record("slice_last", kernels::slice_last_forward(x.value(), begin, end), {x}, [total, begin](const Tensor& g) {
    return std::vector<Tensor>{kernels::slice_last_backward(g, total, begin)};
  });
}

Var reshape(const Var& x, const Shape& s) {
  Shape in = x.shape();
  Var r = record("reshape", x.value().reshape(s), {x}, [in](const Tensor& g) {
    return std::vector<Tensor>{g.reshape(in)};
  });
  // A reshaped parameter (a 1x1 convolution's weight as a matrix) keeps its bf16 copy, reshaped.
  if (x.impl()->lowp.defined() && r.impl() != x.impl()) r.impl()->lowp = x.impl()->lowp.reshape(s);
  return r;
}

}  // namespace diffuse::ag
