// kernels/concat.cpp: concatenation and slicing along the last dim (kernels/concat.h): the cpu path
// (nothing is computed, so it is its own reference) and the Tensor-level ops, which run the GPU's
// strided row copies (kernels/cuda/concat.cu) for a GPU tensor.
//
// Shapes: the tensors are viewed as (rows, C) with rows = the product of the leading dims; each
// row of the output is the rows of the inputs side by side, so every op here is one memcpy per
// row and input (OpenMP over rows when there are many). Nothing is computed, so any dtype works.
#include <cstring>

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/concat.h"

namespace diffuse::kernels {

namespace {

constexpr int64_t kParallelMin = 65536;  // elements; below this a thread team costs more than the copy

void check_cpu(const Tensor& t, const char* what) {
  DF_CHECK(t.defined() && t.device().is_cpu(), what, " on ", t.defined() ? t.device().str() : "an undefined tensor",
           " needs the CUDA backend");
  DF_CHECK(t.dim() >= 1, what, ": needs at least one dim, got ", t.str());
}

// Copies `rows` rows of `w` elements from src (row stride ss) to dst (row stride ds), in elements.
void copy_rows(char* dst, int64_t ds, const char* src, int64_t ss, int64_t rows, int64_t w, size_t es) {
#pragma omp parallel for if (rows * w > kParallelMin)
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * ds * es, src + r * ss * es, w * es);
}

}  // namespace

Tensor concat_last_forward(const std::vector<Tensor>& xs) {
  DF_PROFILE("concat_last_forward");
  DF_CHECK(!xs.empty(), "concat_last of nothing");
  if (xs[0].defined()) DF_ON_CUDA(xs[0].device(), cuda::concat_last_forward(xs));

  Shape out = xs[0].shape();
  int64_t total = 0;
  for (const Tensor& t : xs) {
    check_cpu(t, "concat_last");
    DF_CHECK(t.dtype() == xs[0].dtype(), "concat_last: dtypes differ: ", t.str(), " vs ", xs[0].str());
    Shape lead = t.shape();
    lead[-1] = out[-1];
    DF_CHECK(lead == out, "concat_last: leading dims differ: ", t.shape().str(), " vs ", xs[0].shape().str());
    total += t.size(-1);
  }
  out[-1] = total;
  Tensor y = Tensor::empty(out, xs[0].dtype());
  const int64_t rows = out.numel() / std::max<int64_t>(total, 1);
  const size_t es = dtype_size(y.dtype());
  int64_t off = 0;
  for (const Tensor& t : xs) {
    copy_rows(static_cast<char*>(y.raw()) + off * es, total, static_cast<const char*>(t.raw()), t.size(-1), rows,
              t.size(-1), es);
    off += t.size(-1);
  }
  return y;
}

std::vector<Tensor> concat_last_backward(const Tensor& g, const std::vector<int64_t>& widths) {
  DF_PROFILE("concat_last_backward");
  int64_t total = 0;
  for (int64_t w : widths) total += w;
  DF_CHECK(g.dim() >= 1 && g.size(-1) == total, "concat_last backward: gradient ", g.str(), " for widths summing to ",
           total);
  std::vector<Tensor> out;
  int64_t off = 0;
  for (int64_t w : widths) {
    out.push_back(slice_last_forward(g, off, off + w));
    off += w;
  }
  return out;
}

Tensor slice_last_forward(const Tensor& x, int64_t begin, int64_t end) {
  DF_PROFILE("slice_last_forward");
  if (x.defined()) DF_ON_CUDA(x.device(), cuda::slice_last_forward(x, begin, end));
  check_cpu(x, "slice_last");
  const int64_t C = x.size(-1);
  DF_CHECK(0 <= begin && begin <= end && end <= C, "slice_last [", begin, ", ", end, ") of ", x.shape().str());
  Shape s = x.shape();
  s[-1] = end - begin;
  Tensor y = Tensor::empty(s, x.dtype());
  const size_t es = dtype_size(x.dtype());
  const int64_t rows = x.shape().numel() / std::max<int64_t>(C, 1);
  copy_rows(static_cast<char*>(y.raw()), end - begin, static_cast<const char*>(x.raw()) + begin * es, C, rows,
            end - begin, es);
  return y;
}

Tensor slice_last_backward(const Tensor& g, int64_t total, int64_t begin) {
  DF_PROFILE("slice_last_backward");
  if (g.defined()) DF_ON_CUDA(g.device(), cuda::slice_last_backward(g, total, begin));
  check_cpu(g, "slice_last backward");
  const int64_t c = g.size(-1);
  DF_CHECK(0 <= begin && begin + c <= total, "slice_last backward: gradient ", g.str(), " at ", begin, " of ", total);
  Shape s = g.shape();
  s[-1] = total;
  Tensor dx = Tensor::zeros(s, g.dtype());
  const size_t es = dtype_size(g.dtype());
  const int64_t rows = g.shape().numel() / std::max<int64_t>(c, 1);
  if (c > 0)
    copy_rows(static_cast<char*>(dx.raw()) + begin * es, total, static_cast<const char*>(g.raw()), c, rows, c, es);
  return dx;
}

}  // namespace diffuse::kernels
