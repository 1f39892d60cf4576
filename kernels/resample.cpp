// kernels/resample.cpp: the UNet's 2x resampling on Tensors (kernels/resample.h), on the input's
// device: kernels/cpu/resample.cpp or kernels/cuda/resample.cu (kernels/cuda/resample_cuda.cpp).
#include "kernels/resample.h"

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/cuda/resample.h"

namespace diffuse::kernels {

Tensor upsample_nearest2x_forward(const Tensor& x) {
  DF_PROFILE("upsample_nearest2x_forward");
  DF_ON_CUDA(x.device(), cuda::upsample_nearest2x_forward(x));
  if (!x.device().is_cpu()) unsupported_device("upsample_nearest2x", x.device());
  return cpu::upsample_nearest2x_forward(x);
}

Tensor upsample_nearest2x_backward(const Tensor& g) {
  DF_PROFILE("upsample_nearest2x_backward");
  DF_ON_CUDA(g.device(), cuda::upsample_nearest2x_backward(g));
  if (!g.device().is_cpu()) unsupported_device("upsample_nearest2x", g.device());
  return cpu::upsample_nearest2x_backward(g);
}

Tensor avg_pool2x_forward(const Tensor& x) {
  DF_PROFILE("avg_pool2x_forward");
  DF_ON_CUDA(x.device(), cuda::avg_pool2x_forward(x));
  if (!x.device().is_cpu()) unsupported_device("avg_pool2x", x.device());
  return cpu::avg_pool2x_forward(x);
}

Tensor avg_pool2x_backward(const Tensor& g) {
  DF_PROFILE("avg_pool2x_backward");
  DF_ON_CUDA(g.device(), cuda::avg_pool2x_backward(g));
  if (!g.device().is_cpu()) unsupported_device("avg_pool2x", g.device());
  return cpu::avg_pool2x_backward(g);
}

}  // namespace diffuse::kernels
