// autograd/attention.cpp: the Var-level softmax and multi-head attention. Attention saves its
// softmax probabilities P (B, heads, Tq, Tk) for backward: at the UNet's sizes (T <= 196) that is
// cheaper than recomputing Q K^T (kernels/attention.h).
#include "autograd/attention.h"

#include "kernels/attention.h"
#include "kernels/softmax.h"

namespace diffuse::ag {

Var softmax_last(const Var& x) {
  Tensor y = kernels::softmax_last_forward(x.value());
  // Backward needs only the output: dx = y * (dy - rowsum(dy * y)).
  return record("softmax_last", y, {x},
                [y](const Tensor& dy) { return std::vector<Tensor>{kernels::softmax_last_backward(dy, y)}; });
}

Var attention(const Var& q, const Var& k, const Var& v, int heads) {
  Tensor qv = q.value(), kv = k.value(), vv = v.value();
  kernels::AttentionResult r = kernels::attention_forward(qv, kv, vv, heads);
  Tensor p = r.p;
  return record("attention", r.out, {q, k, v}, [qv, kv, vv, p, heads](const Tensor& dout) {
    kernels::AttentionGrads g = kernels::attention_backward(dout, qv, kv, vv, p, heads);
    return std::vector<Tensor>{g.dq, g.dk, g.dv};
  });
}

}  // namespace diffuse::ag
