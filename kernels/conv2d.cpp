// kernels/conv2d.cpp: 2-D convolution on Tensors, NHWC (kernels/conv2d.h), on x's device: the cpu
// path of kernels/cpu/conv2d.cpp (im2col + GEMM) or cuDNN (kernels/cuda/conv2d_cuda.cpp).
#include "kernels/conv2d.h"

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/cuda/conv2d.h"

namespace diffuse::kernels {

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p) {
  DF_PROFILE("conv2d_forward");
  if (x.device().is_cpu()) {
    Tensor y = Tensor::empty(conv2d_output_shape(x.shape(), w.shape(), p), x.dtype());
    cpu::conv2d_forward(x, w, bias, p, y);
    return y;
  }
  DF_ON_CUDA(x.device(), cuda::conv2d_forward(x, w, bias, p));  // cuDNN, NHWC
  unsupported_device("conv2d", x.device());
}

Conv2dGrads conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Conv2dParams& p, bool need_x,
                            bool need_w, bool need_b) {
  DF_PROFILE("conv2d_backward");
  if (x.device().is_cpu()) {
    Conv2dGrads r;
    if (need_x) r.dx = Tensor::empty(x.shape(), x.dtype());
    if (need_w) r.dw = Tensor::empty(w.shape(), w.dtype());
    if (need_b) r.db = Tensor::empty({w.size(0)}, w.dtype());
    cpu::conv2d_backward(gy, x, w, p, r);
    return r;
  }
  DF_ON_CUDA(x.device(), cuda::conv2d_backward(gy, x, w, p, need_x, need_w, need_b));
  unsupported_device("conv2d", x.device());
}

}  // namespace diffuse::kernels
