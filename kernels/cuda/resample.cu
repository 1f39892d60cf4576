// kernels/cuda/resample.cu: 2x nearest upsampling and 2x2 average pooling on NHWC images, forward
// and backward (launchers in kernels/resample.h, math in kernels/resample.h).
//
// Two maps cover the four ops: a 2x2 block sum of the large grid into the small one (upsample
// backward with scale 1, pool forward with scale 1/4) and a spread of the small grid over the
// large one (upsample forward with scale 1, pool backward with scale 1/4). Each pixel is a run of
// C contiguous values, so a thread moves one 16-byte pack of a pixel when C is a whole number of
// packs (every UNet width), else one element; its pixel comes from two multiply-high divisions
// (detail::FastDivmod). The block sum adds in the cpu's order, ((p00 + p01) + p10) + p11, so f32
// results equal the cpu's.
#include "kernels/cuda/portable.cuh"

#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/common.cuh"
#include "kernels/resample.h"
#include "kernels/cuda/tensor_args.h"

namespace diffuse::DF_BACKEND {

namespace {

using detail::FastDivmod;
using detail::Pack;

constexpr int kBlock = 256;

// A unit is V channels of one pixel; units are numbered (b, h, w, c / V) row-major over the grid
// (H, W) the thread writes.
struct Grid {
  uint32_t units;
  FastDivmod cp, w, h;  // by C / V, W, H of the written grid
  uint32_t C;
};

DF_DEVICE_INLINE void decompose(const Grid& g, uint32_t u, uint32_t& b, uint32_t& h, uint32_t& w, uint32_t& c) {
  const uint32_t pix = g.cp.div(u);
  c = u - pix * g.cp.d;
  const uint32_t t = g.w.div(pix);
  w = pix - t * g.w.d;
  b = g.h.div(t);
  h = t - b * g.h.d;
}

template <class T, int V>
DF_DEVICE_INLINE Pack<T> load_v(const T* p) {
  if constexpr (V == 1) {
    Pack<T> r{};
    r.v[0] = *p;
    return r;
  } else {
    return detail::load_pack(p);
  }
}

template <class T, int V>
DF_DEVICE_INLINE void store_v(T* p, const Pack<T>& v) {
  if constexpr (V == 1) *p = v.v[0];
  else detail::store_pack(p, v);
}

// small (B,H,W,C) = scale * the 2x2 block sums of big (B,2H,2W,C); g describes the small grid.
template <class T, int V>
__global__ void __launch_bounds__(kBlock) block_sum_kernel(const T* __restrict__ big, T* __restrict__ small, Grid g,
                                                           float scale) {
  const uint32_t stride = gridDim.x * blockDim.x;
  const uint32_t W = g.w.d, H = g.h.d;
  for (uint32_t u = blockIdx.x * blockDim.x + threadIdx.x; u < g.units; u += stride) {
    uint32_t b, h, w, c;
    decompose(g, u, b, h, w, c);
    const int64_t p00 = ((static_cast<int64_t>(b) * 2 * H + 2 * h) * 2 * W + 2 * w) * g.C + c * V;
    const int64_t row = static_cast<int64_t>(2 * W) * g.C;
    const Pack<T> a = load_v<T, V>(big + p00), bb = load_v<T, V>(big + p00 + g.C);
    const Pack<T> cc = load_v<T, V>(big + p00 + row), d = load_v<T, V>(big + p00 + row + g.C);
    Pack<T> o;
    for (int k = 0; k < V; ++k) {
      const float s = ((detail::to_f32(a.v[k]) + detail::to_f32(bb.v[k])) + detail::to_f32(cc.v[k])) +
                      detail::to_f32(d.v[k]);
      o.v[k] = detail::from_f32<T>(scale * s);
    }
    store_v<T, V>(small + static_cast<int64_t>(u) * V, o);
  }
}

// big (B,2H,2W,C) = scale * small (B,H,W,C) repeated; g describes the big grid.
template <class T, int V>
__global__ void __launch_bounds__(kBlock) spread_kernel(const T* __restrict__ small, T* __restrict__ big, Grid g,
                                                        float scale) {
  const uint32_t stride = gridDim.x * blockDim.x;
  const uint32_t W2 = g.w.d, H2 = g.h.d;
  for (uint32_t u = blockIdx.x * blockDim.x + threadIdx.x; u < g.units; u += stride) {
    uint32_t b, h, w, c;
    decompose(g, u, b, h, w, c);
    const int64_t src = ((static_cast<int64_t>(b) * (H2 / 2) + h / 2) * (W2 / 2) + w / 2) * g.C + c * V;
    Pack<T> v = load_v<T, V>(small + src);
    if (scale != 1.0f)
      for (int k = 0; k < V; ++k) v.v[k] = detail::from_f32<T>(scale * detail::to_f32(v.v[k]));
    store_v<T, V>(big + static_cast<int64_t>(u) * V, v);
  }
}

Grid make_grid(int64_t B, int64_t H, int64_t W, int64_t C, int V) {
  Grid g;
  g.units = static_cast<uint32_t>(B * H * W * (C / V));
  g.cp = FastDivmod::of(static_cast<uint32_t>(C / V));
  g.w = FastDivmod::of(static_cast<uint32_t>(W));
  g.h = FastDivmod::of(static_cast<uint32_t>(H));
  g.C = static_cast<uint32_t>(C);
  return g;
}

void check_args(const char* op, DType dtype, int64_t B, int64_t H, int64_t W, int64_t C) {
  DF_CHECK(dtype == DType::f32 || dtype == DType::bf16, op, ": dtype ", dtype_name(dtype), " (expected f32 or bf16)");
  DF_CHECK(B >= 0 && H >= 0 && W >= 0 && C >= 0, op, ": negative size");
  DF_CHECK(B * 4 * H * W * C < (int64_t{1} << 31), op, ": ", B * 4 * H * W * C,
           " elements (at most 2^31 - 1: 32-bit indexing)");
}

// sum: block_sum (small written), else spread (big written).
template <class T>
void run(bool sum, const void* in, void* out, int64_t B, int64_t H, int64_t W, int64_t C, float scale, void* stream) {
  constexpr int V = Pack<T>::n;
  const T* src = static_cast<const T*>(in);
  T* dst = static_cast<T*>(out);
  const bool vec = C % V == 0 && detail::aligned16(in) && detail::aligned16(out);
  const int64_t h = sum ? H : 2 * H, w = sum ? W : 2 * W;
  if (vec) {
    const Grid g = make_grid(B, h, w, C, V);
    if (sum)
      DF_LAUNCH((block_sum_kernel<T, V>), dim3(detail::grid_for(g.units, kBlock)), dim3(kBlock), 0, stream, src, dst, g,
                scale);
    else
      DF_LAUNCH((spread_kernel<T, V>), dim3(detail::grid_for(g.units, kBlock)), dim3(kBlock), 0, stream, src, dst, g,
                scale);
  } else {
    const Grid g = make_grid(B, h, w, C, 1);
    if (sum)
      DF_LAUNCH((block_sum_kernel<T, 1>), dim3(detail::grid_for(g.units, kBlock)), dim3(kBlock), 0, stream, src, dst, g,
                scale);
    else
      DF_LAUNCH((spread_kernel<T, 1>), dim3(detail::grid_for(g.units, kBlock)), dim3(kBlock), 0, stream, src, dst, g,
                scale);
  }
}

void dispatch(const char* op, bool sum, const void* in, void* out, DType dtype, int64_t B, int64_t H, int64_t W,
              int64_t C, float scale, void* stream) {
  check_args(op, dtype, B, H, W, C);
  if (B * H * W * C == 0) return;
  DF_CHECK(in && out, op, ": null pointer");
  if (dtype == DType::f32) return run<float>(sum, in, out, B, H, W, C, scale, stream);
  return run<__nv_bfloat16>(sum, in, out, B, H, W, C, scale, stream);
}

}  // namespace

void upsample_nearest2x_forward(const void* x, void* y, DType dtype, int64_t B, int64_t H, int64_t W, int64_t C,
                                void* stream) {
  dispatch("upsample_nearest2x_forward", false, x, y, dtype, B, H, W, C, 1.0f, stream);
}

void upsample_nearest2x_backward(const void* g, void* dx, DType dtype, int64_t B, int64_t H, int64_t W, int64_t C,
                                 void* stream) {
  dispatch("upsample_nearest2x_backward", true, g, dx, dtype, B, H, W, C, 1.0f, stream);
}

void avg_pool2x_forward(const void* x, void* y, DType dtype, int64_t B, int64_t H, int64_t W, int64_t C, void* stream) {
  dispatch("avg_pool2x_forward", true, x, y, dtype, B, H, W, C, 0.25f, stream);
}

void avg_pool2x_backward(const void* g, void* dx, DType dtype, int64_t B, int64_t H, int64_t W, int64_t C,
                         void* stream) {
  dispatch("avg_pool2x_backward", false, g, dx, dtype, B, H, W, C, 0.25f, stream);
}

}  // namespace diffuse::DF_BACKEND

// ---- The Tensor-level op on a GPU -----------------------------------------------------------------
// the Tensor-level nearest 2x upsampling and 2x2 average pooling
// over the launchers of kernels/cuda/resample.cu. Checks what the launchers cannot, allocates
// outputs and workspaces from the caching allocator and launches on the current stream; nothing
// here waits for the device.
#if DF_DEVICE_BUILD

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

#endif  // DF_DEVICE_BUILD
