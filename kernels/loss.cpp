// kernels/loss.cpp: the cross-entropy on Tensors (kernels/loss.h), on the logits' device: the cpu
// loops of kernels/cpu/loss.cpp, or the GPU's (kernels/cuda/softmax_cuda.cpp, beside the softmax
// kernels it shares the log-sum-exp with; f32 loss whatever the logits' dtype).
#include "kernels/loss.h"

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/cuda/softmax.h"

namespace diffuse::kernels {

CrossEntropyResult cross_entropy_forward(const Tensor& logits, const Tensor& labels) {
  DF_PROFILE("cross_entropy_forward");
  DF_CHECK(logits.defined() && labels.defined(), "cross_entropy: undefined tensor");
  DF_ON_CUDA(logits.device(), cuda::cross_entropy_forward(logits, labels));
  if (!logits.device().is_cpu()) unsupported_device("cross_entropy", logits.device());
  DF_CHECK(logits.dim() == 2, "cross_entropy: logits must be (B, K), got ", logits.str());
  CrossEntropyResult r;
  r.loss = Tensor::empty({1}, logits.dtype());
  r.lse = Tensor::empty({logits.size(0)}, logits.dtype());
  cpu::cross_entropy_forward(logits, labels, r.loss, r.lse);
  return r;
}

Tensor cross_entropy_backward(const Tensor& dloss, const Tensor& logits, const Tensor& labels, const Tensor& lse) {
  DF_PROFILE("cross_entropy_backward");
  DF_ON_CUDA(logits.device(), cuda::cross_entropy_backward(dloss, logits, labels, lse));
  if (!logits.device().is_cpu()) unsupported_device("cross_entropy", logits.device());
  Tensor d = Tensor::empty(logits.shape(), logits.dtype());
  cpu::cross_entropy_backward(dloss, logits, labels, lse, d);
  return d;
}

}  // namespace diffuse::kernels
