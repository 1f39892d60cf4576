// autograd/positive_linear.cpp: linear(x, softplus(w), b), a composite with no backward of its
// own: positive weights keep the layer monotone in x (the learned-SNR network of Kingma et al.
// 2021, "Variational Diffusion Models", appendix on the monotonic network).
#include "autograd/elementwise.h"
#include "autograd/linalg.h"
#include "core/check.h"

namespace diffuse::ag {

namespace {

void check_shapes(const Var& x, const Var& w, const Var& b) {
  DF_CHECK(w.dim() == 2 && x.dim() >= 1 && x.size(-1) == w.size(1), "positive_linear: x ", x.value().str(),
           ", w ", w.value().str(), " (w must be (Out, In), x (..., In))");
  DF_CHECK(!b.defined() || b.shape() == Shape({w.size(0)}), "positive_linear: bias ", b.value().str());
}

}  // namespace

Var positive_linear(const Var& x, const Var& w, const Var& b) {
  check_shapes(x, w, b);
  return linear(x, softplus(w), b);
}

}  // namespace diffuse::ag
