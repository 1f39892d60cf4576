// kernels/softmax.cpp: softmax over the last dim on Tensors (kernels/softmax.h), on x's device: the
// cpu path of kernels/cpu/softmax.cpp or the kernels of kernels/cuda/softmax.cu
// (kernels/cuda/softmax_cuda.cpp).
#include "kernels/softmax.h"

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/cuda/softmax.h"

namespace diffuse::kernels {

Tensor softmax_last_forward(const Tensor& x) {
  DF_PROFILE("softmax_last_forward");
  if (x.device().is_cpu()) {
    Tensor y = Tensor::empty(x.shape(), x.dtype());
    cpu::softmax_last_forward(x, y);
    return y;
  }
  DF_ON_CUDA(x.device(), cuda::softmax_last_forward(x));
  unsupported_device("softmax_last", x.device());
}

Tensor softmax_last_backward(const Tensor& dy, const Tensor& y) {
  DF_PROFILE("softmax_last_backward");
  if (y.device().is_cpu()) {
    Tensor dx = Tensor::empty(y.shape(), y.dtype());
    cpu::softmax_last_backward(dy, y, dx);
    return dx;
  }
  DF_ON_CUDA(y.device(), cuda::softmax_last_backward(dy, y));
  unsupported_device("softmax_last", y.device());
}

}  // namespace diffuse::kernels
