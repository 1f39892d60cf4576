// kernels/loss.h: the losses that need their own kernel (the mse family is a composite of
// elementwise ops at the Var level).
//
// cross_entropy: logits (B, K), labels i64 (B) in [0, K). Per row, with the max subtracted so
// exp never overflows (log-softmax is shift-invariant):
//   lse[b]  = m + log(sum_k exp(x[b,k] - m)),  m = max_k x[b,k]
//   loss    = mean_b (lse[b] - x[b, label[b]])                     -> {1}
//   dlogits = g / B * (softmax(x[b]) - onehot(label[b]))           (g the gradient of loss)
// Forward returns lse (B) for backward. Labels out of range throw. f32 or f64.
#pragma once

#include "core/tensor.h"

namespace diffuse::kernels {

struct CrossEntropyResult {
  Tensor loss;  // {1}
  Tensor lse;   // (B): what backward needs
};

CrossEntropyResult cross_entropy_forward(const Tensor& logits, const Tensor& labels);
Tensor cross_entropy_backward(const Tensor& dloss /*{1}*/, const Tensor& logits, const Tensor& labels,
                              const Tensor& lse);

namespace cpu {
void cross_entropy_forward(const Tensor& logits, const Tensor& labels, Tensor& loss, Tensor& lse);
void cross_entropy_backward(const Tensor& dloss, const Tensor& logits, const Tensor& labels, const Tensor& lse,
                            Tensor& dlogits);
}  // namespace cpu

}  // namespace diffuse::kernels
