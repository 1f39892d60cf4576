// kernels/cuda/softmax_cuda.cpp: the Tensor-level softmax and cross-entropy over the launchers of
// kernels/cuda/softmax.cu (the cross-entropy is f32 whatever the activations' dtype). Checks what
// the launchers cannot, allocates outputs and workspaces from the caching allocator and launches on
// the current stream; nothing here waits for the device.
#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/softmax.h"
#include "kernels/cuda/tensor_args.h"

namespace diffuse::cuda {

using namespace args;
using kernels::CrossEntropyResult;

Tensor softmax_last_forward(const Tensor& x) {
  check_act(x, "softmax_last");
  set_current_device(x.device());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t L = x.dim() ? x.size(-1) : 1;
  cuda::softmax_forward(x.raw(), y.raw(), x.dtype(), L ? x.numel() / L : 0, L, current_stream());
  return y;
}

Tensor softmax_last_backward(const Tensor& dy, const Tensor& y) {
  check_act(y, "softmax_last backward");
  check_like(dy, y, "softmax_last backward");
  check_same_shape(dy, y, "softmax_last backward");
  set_current_device(y.device());
  Tensor dx = Tensor::empty(y.shape(), y.dtype(), y.device());
  const int64_t L = y.dim() ? y.size(-1) : 1;
  cuda::softmax_backward(dy.raw(), y.raw(), dx.raw(), y.dtype(), L ? y.numel() / L : 0, L, current_stream());
  return dx;
}

// Labels out of range give a NaN loss instead of an error: checking them would wait for the GPU.
CrossEntropyResult cross_entropy_forward(const Tensor& logits, const Tensor& labels) {
  check_act(logits, "cross_entropy");
  DF_CHECK(logits.dim() == 2 && labels.dtype() == DType::i64 && labels.shape() == Shape({logits.size(0)}),
           "cross_entropy: logits (B, K) and i64 labels (B), got ", logits.str(), ", ", labels.str());
  check_device(labels, logits.device(), "cross_entropy labels");
  set_current_device(logits.device());
  const Tensor x = logits.to(DType::f32);  // the loss is f32 whatever the activations
  const int64_t B = x.size(0), K = x.size(1);
  CrossEntropyResult r;
  r.loss = Tensor::empty({1}, DType::f32, x.device());
  r.lse = Tensor::empty({B}, DType::f32, x.device());
  Tensor rows = Tensor::empty({B}, DType::f32, x.device());
  cuda::cross_entropy_forward(x.data<float>(), labels.data<int64_t>(), r.lse.data<float>(), rows.data<float>(),
                              r.loss.data<float>(), B, K, current_stream());
  return r;
}

Tensor cross_entropy_backward(const Tensor& dloss, const Tensor& logits, const Tensor& labels, const Tensor& lse) {
  check_act(logits, "cross_entropy backward");
  set_current_device(logits.device());
  const Tensor x = logits.to(DType::f32), g = dloss.to(DType::f32);
  Tensor d = Tensor::empty(x.shape(), DType::f32, x.device());
  cuda::cross_entropy_backward(g.data<float>(), x.data<float>(), labels.data<int64_t>(), lse.data<float>(),
                               d.data<float>(), x.size(0), x.size(1), current_stream());
  return d.to(logits.dtype());
}

}  // namespace diffuse::cuda
