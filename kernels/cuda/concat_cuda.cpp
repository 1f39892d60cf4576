// kernels/cuda/concat_cuda.cpp: the Tensor-level concatenation and slicing along the last dim:
// strided row copies (kernels/cuda/concat.cu). Checks what the launchers cannot, allocates outputs
// and workspaces from the caching allocator and launches on the current stream; nothing here waits
// for the device.
#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/concat.h"
#include "kernels/cuda/tensor_args.h"

namespace diffuse::cuda {

using namespace args;

Tensor concat_last_forward(const std::vector<Tensor>& xs) {
  DF_CHECK(!xs.empty(), "concat_last of nothing");
  Shape out = xs[0].shape();
  int64_t total = 0;
  for (const Tensor& t : xs) {
    DF_CHECK(t.defined() && t.dim() >= 1 && t.device() == xs[0].device() && t.dtype() == xs[0].dtype(),
             "concat_last: ", t.str(), " with ", xs[0].str());
    Shape lead = t.shape();
    lead[-1] = out[-1];
    DF_CHECK(lead == out, "concat_last: leading dims differ: ", t.shape().str(), " vs ", xs[0].shape().str());
    total += t.size(-1);
  }
  out[-1] = total;
  set_current_device(xs[0].device());
  Tensor y = Tensor::empty(out, xs[0].dtype(), xs[0].device());
  const int64_t rows = total ? out.numel() / total : 0;
  const int64_t es = static_cast<int64_t>(dtype_size(y.dtype()));
  int64_t off = 0;
  for (const Tensor& t : xs) {
    const int64_t w = t.size(-1);
    cuda::copy_rows(static_cast<char*>(y.raw()) + off * es, total * es, t.raw(), w * es, rows, w * es,
                    current_stream());
    off += w;
  }
  return y;
}

Tensor slice_last_forward(const Tensor& x, int64_t begin, int64_t end) {
  DF_CHECK(x.defined() && x.dim() >= 1, "slice_last of ", x.str());
  const int64_t C = x.size(-1);
  DF_CHECK(0 <= begin && begin <= end && end <= C, "slice_last [", begin, ", ", end, ") of ", x.shape().str());
  set_current_device(x.device());
  Shape s = x.shape();
  s[-1] = end - begin;
  Tensor y = Tensor::empty(s, x.dtype(), x.device());
  const int64_t es = static_cast<int64_t>(dtype_size(x.dtype()));
  const int64_t rows = C ? x.numel() / C : 0;
  cuda::copy_rows(y.raw(), (end - begin) * es, static_cast<const char*>(x.raw()) + begin * es, C * es, rows,
                  (end - begin) * es, current_stream());
  return y;
}

Tensor slice_last_backward(const Tensor& g, int64_t total, int64_t begin) {
  DF_CHECK(g.defined() && g.dim() >= 1, "slice_last backward of ", g.str());
  const int64_t c = g.size(-1);
  DF_CHECK(0 <= begin && begin + c <= total, "slice_last backward: gradient ", g.str(), " at ", begin, " of ", total);
  set_current_device(g.device());
  Shape s = g.shape();
  s[-1] = total;
  Tensor dx = Tensor::zeros(s, g.dtype(), g.device());
  const int64_t es = static_cast<int64_t>(dtype_size(g.dtype()));
  const int64_t rows = c ? g.numel() / c : 0;
  cuda::copy_rows(static_cast<char*>(dx.raw()) + begin * es, total * es, g.raw(), c * es, rows, c * es,
                  current_stream());
  return dx;
}

}  // namespace diffuse::cuda
