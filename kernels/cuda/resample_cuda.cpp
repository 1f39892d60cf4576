// kernels/cuda/resample_cuda.cpp: the Tensor-level nearest 2x upsampling and 2x2 average pooling
// over the launchers of kernels/cuda/resample.cu. Checks what the launchers cannot, allocates
// outputs and workspaces from the caching allocator and launches on the current stream; nothing
// here waits for the device.
#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/resample.h"
#include "kernels/cuda/tensor_args.h"

namespace diffuse::cuda {

using namespace args;

namespace {

Tensor resample(const Tensor& in, bool to_large, const char* what,
                void (*launch)(const void*, void*, DType, int64_t, int64_t, int64_t, int64_t, void*)) {
  check_act(in, what);
  DF_CHECK(in.dim() == 4, what, ": expected (B,H,W,C), got ", in.str());
  const int64_t B = in.size(0), H = in.size(1), W = in.size(2), C = in.size(3);
  if (!to_large) DF_CHECK(H % 2 == 0 && W % 2 == 0, what, ": H and W must be even, got ", in.shape().str());
  set_current_device(in.device());
  const Shape out = to_large ? Shape{B, 2 * H, 2 * W, C} : Shape{B, H / 2, W / 2, C};
  Tensor y = Tensor::empty(out, in.dtype(), in.device());
  const Shape& small = to_large ? in.shape() : out;
  launch(in.raw(), y.raw(), in.dtype(), small[0], small[1], small[2], small[3], current_stream());
  return y;
}

}  // namespace

Tensor upsample_nearest2x_forward(const Tensor& x) {
  return resample(x, true, "upsample_nearest2x", cuda::upsample_nearest2x_forward);
}
Tensor upsample_nearest2x_backward(const Tensor& g) {
  return resample(g, false, "upsample_nearest2x backward", cuda::upsample_nearest2x_backward);
}
Tensor avg_pool2x_forward(const Tensor& x) { return resample(x, false, "avg_pool2x", cuda::avg_pool2x_forward); }
Tensor avg_pool2x_backward(const Tensor& g) { return resample(g, true, "avg_pool2x backward", cuda::avg_pool2x_backward); }

}  // namespace diffuse::cuda
