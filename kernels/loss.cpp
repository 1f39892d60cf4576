// kernels/loss.cpp: softmax cross-entropy over class logits (kernels/loss.h): the cpu loops, and the
// Tensor-level op, which runs on the logits' device: the cpu here or the GPU's
// (kernels/cuda/softmax.cu, beside the softmax kernels it shares the log-sum-exp with; f32 loss
// whatever the logits' dtype).
//
// Glossary: B rows (samples), K classes. Per row the max m is subtracted before exp, so no exp
// overflows and the largest term is exactly 1 (the sum is >= 1, its log well conditioned); the
// sums run in double. B and K are small (a classifier head), so there is no fast path.
#include "kernels/loss.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/softmax.h"

namespace diffuse::kernels {

namespace {

void check_ce(const Tensor& logits, const Tensor& labels) {
  DF_CHECK(logits.dim() == 2, "cross_entropy: logits must be (B, K), got ", logits.str());
  DF_CHECK(labels.dtype() == DType::i64 && labels.shape() == Shape({logits.size(0)}),
           "cross_entropy: labels must be i64 (B), got ", labels.str(), " for logits ", logits.str());
  const int64_t K = logits.size(1);
  const int64_t* y = labels.data<int64_t>();
  for (int64_t b = 0; b < labels.numel(); ++b)
    DF_CHECK(y[b] >= 0 && y[b] < K, "cross_entropy: label ", y[b], " of row ", b, " is outside [0, ", K, ")");
}

template <class T>
void ce_forward(const T* x, const int64_t* y, int64_t B, int64_t K, T* loss, T* lse) {
  double total = 0;
  for (int64_t b = 0; b < B; ++b) {
    const T* row = x + b * K;
    const double m = static_cast<double>(*std::max_element(row, row + K));
    double s = 0;
    for (int64_t k = 0; k < K; ++k) s += std::exp(static_cast<double>(row[k]) - m);
    const double l = m + std::log(s);
    lse[b] = static_cast<T>(l);
    total += l - static_cast<double>(row[y[b]]);
  }
  *loss = static_cast<T>(total / static_cast<double>(B));
}

template <class T>
void ce_backward(T g, const T* x, const int64_t* y, const T* lse, int64_t B, int64_t K, T* dx) {
  const T gb = g / static_cast<T>(B);
  for (int64_t b = 0; b < B; ++b) {
    const T* row = x + b * K;
    T* d = dx + b * K;
    for (int64_t k = 0; k < K; ++k) d[k] = gb * std::exp(row[k] - lse[b]);  // softmax = exp(x - lse)
    d[y[b]] -= gb;
  }
}

}  // namespace

namespace cpu {

void cross_entropy_forward(const Tensor& logits, const Tensor& labels, Tensor& loss, Tensor& lse) {
  check_ce(logits, labels);
  const int64_t B = logits.size(0), K = logits.size(1);
  DF_CHECK(B > 0, "cross_entropy: empty batch");
  DF_CHECK(loss.numel() == 1 && lse.shape() == Shape({B}) && loss.dtype() == logits.dtype() &&
               lse.dtype() == logits.dtype(),
           "cross_entropy: outputs ", loss.str(), ", ", lse.str(), " for ", logits.str());
  if (logits.dtype() == DType::f32)
    ce_forward(logits.data<float>(), labels.data<int64_t>(), B, K, loss.data<float>(), lse.data<float>());
  else if (logits.dtype() == DType::f64)
    ce_forward(logits.data<double>(), labels.data<int64_t>(), B, K, loss.data<double>(), lse.data<double>());
  else
    DF_FAIL("cross_entropy: logits ", logits.str(), " (f32 or f64 expected)");
}

void cross_entropy_backward(const Tensor& dloss, const Tensor& logits, const Tensor& labels, const Tensor& lse,
                            Tensor& dlogits) {
  check_ce(logits, labels);
  check_same_shape(logits, dlogits, "cross_entropy backward");
  DF_CHECK(dloss.numel() == 1 && dloss.dtype() == logits.dtype() && lse.dtype() == logits.dtype() &&
               dlogits.dtype() == logits.dtype(),
           "cross_entropy backward: dtypes or shapes differ");
  const int64_t B = logits.size(0), K = logits.size(1);
  if (logits.dtype() == DType::f32)
    ce_backward(dloss.data<float>()[0], logits.data<float>(), labels.data<int64_t>(), lse.data<float>(), B, K,
                dlogits.data<float>());
  else
    ce_backward(dloss.data<double>()[0], logits.data<double>(), labels.data<int64_t>(), lse.data<double>(), B, K,
                dlogits.data<double>());
}

}  // namespace cpu

}  // namespace diffuse::kernels

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
