// kernels/cuda/concat.cu: the strided row copy of concat_last / slice_last on a GPU (launcher in
// kernels/concat.h). The UNet's skip connections concatenate (B,H,W,C1) and (B,H,W,C2) along
// the channels, so each pixel's run of C1 (or C2) values lands at a column offset of a wider row:
// a 2-D copy. A thread moves one unit of 16 bytes (8 bf16 channels) when every address and length
// allows, which holds for every UNet width; its row and column come from one multiply-high
// division (detail::FastDivmod).
#include "kernels/cuda/portable.cuh"

#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/common.cuh"
#include "kernels/concat.h"
#include "kernels/cuda/tensor_args.h"

namespace diffuse::DF_BACKEND {

namespace {

using detail::FastDivmod;

constexpr int kBlock = 256;

// U: an unsigned type of the unit's size (uint4 for 16 bytes). Strides and width in units.
template <class U>
__global__ void __launch_bounds__(kBlock) copy_rows_kernel(U* __restrict__ dst, uint32_t dst_stride,
                                                           const U* __restrict__ src, uint32_t src_stride,
                                                           FastDivmod width, uint32_t units) {
  const uint32_t stride = gridDim.x * blockDim.x;
  for (uint32_t u = blockIdx.x * blockDim.x + threadIdx.x; u < units; u += stride) {
    const uint32_t r = width.div(u);
    const uint32_t j = u - r * width.d;
    dst[static_cast<int64_t>(r) * dst_stride + j] = src[static_cast<int64_t>(r) * src_stride + j];
  }
}

template <class U>
void launch(void* dst, int64_t ds, const void* src, int64_t ss, int64_t rows, int64_t width, void* stream) {
  constexpr int64_t s = sizeof(U);
  const int64_t units = rows * (width / s);
  DF_CHECK(units < (int64_t{1} << 31) && ds / s < (int64_t{1} << 32) && ss / s < (int64_t{1} << 32),
           "copy_rows: ", rows, " rows of ", width, " bytes (32-bit indexing)");
  DF_LAUNCH(copy_rows_kernel<U>, dim3(detail::grid_for(units, kBlock)), dim3(kBlock), 0, stream, static_cast<U*>(dst),
            static_cast<uint32_t>(ds / s), static_cast<const U*>(src), static_cast<uint32_t>(ss / s),
            FastDivmod::of(static_cast<uint32_t>(width / s)), static_cast<uint32_t>(units));
}

}  // namespace

void copy_rows(void* dst, int64_t dst_stride, const void* src, int64_t src_stride, int64_t rows, int64_t width,
               void* stream) {
  DF_CHECK(rows >= 0 && width >= 0 && dst_stride >= width && src_stride >= width, "copy_rows: rows ", rows,
           ", width ", width, ", strides ", dst_stride, " and ", src_stride);
  if (rows == 0 || width == 0) return;
  DF_CHECK(dst && src, "copy_rows: null pointer");
  // The widest unit that divides both addresses, both strides and the width.
  const uint64_t all = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) |
                       static_cast<uint64_t>(dst_stride) | static_cast<uint64_t>(src_stride) |
                       static_cast<uint64_t>(width);
  if (all % 16 == 0) return launch<uint4>(dst, dst_stride, src, src_stride, rows, width, stream);
  if (all % 8 == 0) return launch<uint2>(dst, dst_stride, src, src_stride, rows, width, stream);
  if (all % 4 == 0) return launch<uint32_t>(dst, dst_stride, src, src_stride, rows, width, stream);
  if (all % 2 == 0) return launch<uint16_t>(dst, dst_stride, src, src_stride, rows, width, stream);
  return launch<uint8_t>(dst, dst_stride, src, src_stride, rows, width, stream);
}

}  // namespace diffuse::DF_BACKEND

// ---- The Tensor-level op on a GPU -----------------------------------------------------------------
// the Tensor-level concatenation and slicing along the last dim:
// strided row copies (kernels/cuda/concat.cu). Checks what the launchers cannot, allocates outputs
// and workspaces from the caching allocator and launches on the current stream; nothing here waits
// for the device.
#if DF_DEVICE_BUILD

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

#endif  // DF_DEVICE_BUILD
