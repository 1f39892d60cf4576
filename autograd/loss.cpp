// autograd/loss.cpp: the losses of autograd/elementwise.h. The mse family is a composite of
// differentiable ops (no backward of its own); cross-entropy has a fused kernel (kernels/loss.h).
#include <vector>

#include "autograd/elementwise.h"
#include "core/check.h"
#include "kernels/loss.h"

namespace diffuse::ag {

Var mse(const Var& a, const Var& b) {
  check_same_shape(a.value(), b.value(), "mse");
  return mean_all(square(sub(a, b)));
}

Var per_sample_mse(const Var& a, const Var& b) {
  check_same_shape(a.value(), b.value(), "per_sample_mse");
  DF_CHECK(a.dim() >= 1, "per_sample_mse: ", a.value().str());
  Var d2 = square(sub(a, b));
  if (a.dim() == 1) return d2;  // one element per sample
  std::vector<int> axes;
  for (int i = 1; i < a.dim(); ++i) axes.push_back(i);
  return mean(d2, axes);
}

Var weighted_mse(const Var& a, const Var& b, const Tensor& w) {
  DF_CHECK(a.dim() >= 1 && w.shape() == Shape({a.size(0)}), "weighted_mse: weights ", w.str(), " for ",
           a.value().str());
  return mean_all(mul(per_sample_mse(a, b), Var(w.to(a.dtype()))));
}

Var cross_entropy(const Var& logits, const Tensor& labels) {
  kernels::CrossEntropyResult r = kernels::cross_entropy_forward(logits.value(), labels);
  return record("cross_entropy", r.loss, {logits}, [x = logits.value(), labels, lse = r.lse](const Tensor& g) {
    return std::vector<Tensor>{kernels::cross_entropy_backward(g, x, labels, lse)};
  });
}

}  // namespace diffuse::ag
