// kernels/attention.cpp: multi-head attention on Tensors (kernels/attention.h), on q's device: the cpu
// path of kernels/cpu/attention.cpp (saved = P) or the GPU's (kernels/cuda/attention_cuda.cpp: the
// flash kernels, saved = the row log-sum-exp, for head dims 32 and 64).
#include "kernels/attention.h"

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/cuda/attention.h"

namespace diffuse::kernels {

AttentionResult attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int heads) {
  DF_PROFILE("attention_forward");
  if (q.device().is_cpu()) {
    DF_CHECK(q.dim() == 3 && k.dim() == 3, "attention: q, k must be (B, T, C), got ", q.str(), ", ", k.str());
    AttentionResult r;
    r.out = Tensor::empty(q.shape(), q.dtype());
    r.saved = Tensor::empty({q.size(0), heads, q.size(1), k.size(1)}, q.dtype());
    cpu::attention_forward(q, k, v, heads, r.out, r.saved);
    return r;
  }
  DF_ON_CUDA(q.device(), cuda::attention_forward(q, k, v, heads));
  unsupported_device("attention", q.device());
}

AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionResult& fwd, int heads) {
  DF_PROFILE("attention_backward");
  if (q.device().is_cpu()) {
    AttentionGrads g{Tensor::empty(q.shape(), q.dtype()), Tensor::empty(k.shape(), k.dtype()),
                     Tensor::empty(v.shape(), v.dtype())};
    cpu::attention_backward(dout, q, k, v, fwd.saved, heads, g.dq, g.dk, g.dv);
    return g;
  }
  DF_ON_CUDA(q.device(), cuda::attention_backward(dout, q, k, v, fwd, heads));
  unsupported_device("attention", q.device());
}

}  // namespace diffuse::kernels
