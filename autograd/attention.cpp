// autograd/attention.cpp: the Var-level softmax and multi-head attention. Attention keeps the
// forward's whole result for backward: its output and `saved`, P (B, heads, Tq, Tk) on the cpu
// (at the UNet's sizes cheaper than recomputing Q K^T) or the flash kernels' row log-sum-exp on a
// GPU (kernels/attention.h).
#include "autograd/attention.h"

#include "autograd/autocast.h"

#include "kernels/attention.h"
#include "kernels/softmax.h"

namespace diffuse::ag {

Var softmax_last(const Var& x) {
  Tensor y = kernels::softmax_last_forward(x.value());
  // Backward needs only the output: dx = y * (dy - rowsum(dy * y)).
  return record("softmax_last", y, {x},
                [y](const Tensor& dy) { return std::vector<Tensor>{kernels::softmax_last_backward(dy, y)}; });
}

Var attention(const Var& q_in, const Var& k_in, const Var& v_in, int heads) {
  const Var q = autocast(q_in), k = autocast(k_in), v = autocast(v_in);
  Tensor qv = q.value(), kv = k.value(), vv = v.value();
  kernels::AttentionResult r = kernels::attention_forward(qv, kv, vv, heads);
  return record("attention", r.out, {q, k, v}, [qv, kv, vv, r, heads](const Tensor& dout) {
    kernels::AttentionGrads g = kernels::attention_backward(dout, qv, kv, vv, r, heads);
    return std::vector<Tensor>{g.dq, g.dk, g.dv};
  });
}

}  // namespace diffuse::ag
