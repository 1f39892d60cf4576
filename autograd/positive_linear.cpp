// autograd/positive_linear.cpp: linear(x, softplus(w), b), a composite with no backward of its
// own: positive weights keep the layer monotone in x (the learned-SNR network of Kingma et al.
// 2021, "Variational Diffusion Models", appendix on the monotonic network).
#include <vector>

#include "autograd/elementwise.h"
#include "core/check.h"

#if __has_include("autograd/linalg.h")
#include "autograd/linalg.h"
#define DIFFUSE_POSITIVE_LINEAR_VIA_LINEAR 1
#endif

namespace diffuse::ag {

namespace {

void check_shapes(const Var& x, const Var& w, const Var& b) {
  DF_CHECK(w.dim() == 2 && x.dim() >= 1 && x.size(-1) == w.size(1), "positive_linear: x ", x.value().str(),
           ", w ", w.value().str(), " (w must be (Out, In), x (..., In))");
  DF_CHECK(!b.defined() || b.shape() == Shape({w.size(0)}), "positive_linear: bias ", b.value().str());
}

#ifndef DIFFUSE_POSITIVE_LINEAR_VIA_LINEAR
// Until autograd/linalg.h (linear) is in the tree: the same product written with broadcasting,
// x (..., 1, In) * softplus(w) (Out, In) summed over In. Correct and differentiable through the
// elementwise rules, but it materialises (..., Out, In): meant for the small monotone nets only,
// and replaced by linear() automatically once linalg.h exists.
Var view(const Var& x, const Shape& s) {
  return record("reshape", x.value().reshape(s), {x},
                [xs = x.shape()](const Tensor& g) { return std::vector<Tensor>{g.reshape(xs)}; });
}
#endif

}  // namespace

Var positive_linear(const Var& x, const Var& w, const Var& b) {
  check_shapes(x, w, b);
#ifdef DIFFUSE_POSITIVE_LINEAR_VIA_LINEAR
  return linear(x, softplus(w), b);
#else
  std::vector<int64_t> d = x.shape().vec();
  d.insert(d.end() - 1, 1);
  Var y = sum(mul(view(x, Shape(d)), softplus(w)), {-1});
  return b.defined() ? add(y, b) : y;
#endif
}

}  // namespace diffuse::ag
