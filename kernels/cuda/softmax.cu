// kernels/cuda/softmax.cu: softmax over rows, its backward, and the cross-entropy loss on logits.
// Launchers in kernels/softmax.h.
//
// A row is reduced by a group of R threads: one warp (R = 32, eight rows per 256-thread block) for
// rows up to 1024 long, where a block per row would leave most threads idle; the whole block
// (R = 256) for longer rows. The forward computes the row's max and its sum of exponentials in one
// pass with the online rescaling of Milakov & Gimelshein 2018 ("Online normalizer calculation
// for softmax"): a running (m, s) becomes (x, s e^(m - x) + 1) when x exceeds m, and two partial
// pairs combine as (M, s1 e^(m1 - M) + s2 e^(m2 - M)). A second pass writes exp(x - m) / s; the
// re-read of the row comes from L1/L2. Subtracting the max keeps exp from overflowing.
#include "kernels/cuda/portable.cuh"

#include "core/check.h"
#include "core/stream.h"
#include "kernels/cuda/common.cuh"
#include "kernels/softmax.h"
#include "kernels/cuda/tensor_args.h"

namespace diffuse::DF_BACKEND {

namespace {

using detail::from_f32;
using detail::to_f32;

constexpr int kBlock = 256;
constexpr int64_t kWarpRowMax = 1024;

struct MaxSum {
  float m, s;
};

DF_DEVICE_INLINE MaxSum combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f};  // both empty: avoid exp(-inf - -inf) = NaN
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

DF_DEVICE_INLINE MaxSum warp_combine(MaxSum v) {
  for (int off = 16; off > 0; off /= 2) {
    MaxSum o{__shfl_xor_sync(0xffffffffu, v.m, off), __shfl_xor_sync(0xffffffffu, v.s, off)};
    v = combine(v, o);
  }
  return v;
}

// (max, sum) over a row group of R threads, returned to each of them. scratch: 2 * kBlock / 32
// floats of shared memory (used when R is the block).
template <int R>
DF_DEVICE_INLINE MaxSum group_combine(MaxSum v, float* scratch) {
  v = warp_combine(v);
  if constexpr (R == 32) {
    return v;
  } else {
    static_assert(R == kBlock, "a row group is a warp or the block");
    constexpr int kWarps = kBlock / 32;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) scratch[warp] = v.m, scratch[kWarps + warp] = v.s;
    __syncthreads();
    MaxSum t = lane < kWarps ? MaxSum{scratch[lane], scratch[kWarps + lane]} : MaxSum{-INFINITY, 0.0f};
    t = warp_combine(t);
    __syncthreads();
    return t;
  }
}

template <int R>
DF_DEVICE_INLINE float group_sum(float v, float* scratch) {
  if constexpr (R == 32) return detail::warp_sum(v);
  else return detail::block_sum<kBlock>(v, scratch);
}

// The row a thread works on, and its lane within the row group. With R = 32 a warp past the last
// row returns as a whole, which is safe: the group only synchronises within the warp.
template <int R>
DF_DEVICE_INLINE int64_t row_of() {
  return static_cast<int64_t>(blockIdx.x) * (kBlock / R) + threadIdx.x / R;
}

template <class T>
DF_DEVICE_INLINE MaxSum row_max_sum(const T* __restrict__ x, int64_t L, int lane, int R) {
  MaxSum ms{-INFINITY, 0.0f};
  for (int64_t c = lane; c < L; c += R) {
    const float v = to_f32(x[c]);
    if (v > ms.m) {
      ms.s = ms.s * expf(ms.m - v) + 1.0f;
      ms.m = v;
    } else {
      ms.s += expf(v - ms.m);
    }
  }
  return ms;
}

template <class T, int R>
__global__ void __launch_bounds__(kBlock) softmax_forward_kernel(const T* __restrict__ x, T* __restrict__ y,
                                                                 int64_t rows, int64_t L) {
  DF_SHARED(float, scratch, 2 * kBlock / 32);
  const int64_t r = row_of<R>();
  if (r >= rows) return;
  const int lane = threadIdx.x % R;
  const T* xr = x + r * L;
  T* yr = y + r * L;
  const MaxSum ms = group_combine<R>(row_max_sum(xr, L, lane, R), scratch);
  const float inv = 1.0f / ms.s;
  for (int64_t c = lane; c < L; c += R) yr[c] = from_f32<T>(expf(to_f32(xr[c]) - ms.m) * inv);
}

template <class T, int R>
__global__ void __launch_bounds__(kBlock) softmax_backward_kernel(const T* __restrict__ dy, const T* __restrict__ y,
                                                                  T* __restrict__ dx, int64_t rows, int64_t L) {
  DF_SHARED(float, scratch, kBlock / 32);
  const int64_t r = row_of<R>();
  if (r >= rows) return;
  const int lane = threadIdx.x % R;
  const T* gr = dy + r * L;
  const T* yr = y + r * L;
  float dot = 0.0f;
  for (int64_t c = lane; c < L; c += R) dot += to_f32(gr[c]) * to_f32(yr[c]);
  dot = group_sum<R>(dot, scratch);
  for (int64_t c = lane; c < L; c += R) dx[r * L + c] = from_f32<T>(to_f32(yr[c]) * (to_f32(gr[c]) - dot));
}

template <int R>
__global__ void __launch_bounds__(kBlock) cross_entropy_rows_kernel(const float* __restrict__ logits,
                                                                    const int64_t* __restrict__ labels,
                                                                    float* __restrict__ lse,
                                                                    float* __restrict__ row_loss, int64_t B,
                                                                    int64_t K) {
  DF_SHARED(float, scratch, 2 * kBlock / 32);
  const int64_t r = row_of<R>();
  if (r >= B) return;
  const int lane = threadIdx.x % R;
  const float* xr = logits + r * K;
  const MaxSum ms = group_combine<R>(row_max_sum(xr, K, lane, R), scratch);
  if (lane == 0) {
    const float l = ms.m + logf(ms.s);
    const int64_t label = labels[r];
    lse[r] = l;
    row_loss[r] = (label >= 0 && label < K) ? l - xr[label] : NAN;
  }
}

// The mean over rows in a fixed order (one block, strided per thread, then the block tree), so
// the loss is reproducible run to run.
constexpr int kMeanBlock = 1024;
__global__ void __launch_bounds__(kMeanBlock) mean_kernel(const float* __restrict__ v, int64_t n,
                                                          float* __restrict__ out) {
  DF_SHARED(float, scratch, kMeanBlock / 32);
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += kMeanBlock) acc += v[i];
  acc = detail::block_sum<kMeanBlock>(acc, scratch);
  if (threadIdx.x == 0) out[0] = acc / static_cast<float>(n);
}

__global__ void __launch_bounds__(kBlock) cross_entropy_backward_kernel(const float* __restrict__ dloss,
                                                                        const float* __restrict__ logits,
                                                                        const int64_t* __restrict__ labels,
                                                                        const float* __restrict__ lse,
                                                                        float* __restrict__ dlogits, int64_t B,
                                                                        int64_t K) {
  const float g = dloss[0] / static_cast<float>(B);
  const int64_t n = B * K;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t b = i / K, k = i - b * K;
    const float p = expf(logits[i] - lse[b]);
    dlogits[i] = g * (p - (k == labels[b] ? 1.0f : 0.0f));
  }
}

unsigned row_grid(int64_t rows, int R) {
  const int64_t per_block = kBlock / R;
  const int64_t g = (rows + per_block - 1) / per_block;
  DF_CHECK(g <= 0x7fffffff, "softmax: ", rows, " rows");
  return static_cast<unsigned>(g);
}

template <class T>
void softmax_forward_t(const void* x, void* y, int64_t rows, int64_t L, void* stream) {
  const T* xt = static_cast<const T*>(x);
  T* yt = static_cast<T*>(y);
  if (L <= kWarpRowMax) {
    DF_LAUNCH((softmax_forward_kernel<T, 32>), dim3(row_grid(rows, 32)), dim3(kBlock), 0, stream, xt, yt, rows, L);
  } else {
    DF_LAUNCH((softmax_forward_kernel<T, kBlock>), dim3(row_grid(rows, kBlock)), dim3(kBlock), 0, stream, xt, yt,
              rows, L);
  }
}

template <class T>
void softmax_backward_t(const void* dy, const void* y, void* dx, int64_t rows, int64_t L, void* stream) {
  const T* gt = static_cast<const T*>(dy);
  const T* yt = static_cast<const T*>(y);
  T* dt = static_cast<T*>(dx);
  if (L <= kWarpRowMax) {
    DF_LAUNCH((softmax_backward_kernel<T, 32>), dim3(row_grid(rows, 32)), dim3(kBlock), 0, stream, gt, yt, dt, rows,
              L);
  } else {
    DF_LAUNCH((softmax_backward_kernel<T, kBlock>), dim3(row_grid(rows, kBlock)), dim3(kBlock), 0, stream, gt, yt, dt,
              rows, L);
  }
}

void check_rows(const char* op, DType dtype, int64_t rows, int64_t L) {
  DF_CHECK(rows >= 0 && L >= 0, op, ": negative size ", rows, " x ", L);
  DF_CHECK(dtype == DType::f32 || dtype == DType::bf16, op, ": dtype ", dtype_name(dtype), " (expected f32 or bf16)");
}

}  // namespace

void softmax_forward(const void* x, void* y, DType dtype, int64_t rows, int64_t L, void* stream) {
  check_rows("softmax_forward", dtype, rows, L);
  if (rows == 0 || L == 0) return;
  DF_CHECK(x && y, "softmax_forward: null pointer");
  if (dtype == DType::f32) return softmax_forward_t<float>(x, y, rows, L, stream);
  return softmax_forward_t<__nv_bfloat16>(x, y, rows, L, stream);
}

void softmax_backward(const void* dy, const void* y, void* dx, DType dtype, int64_t rows, int64_t L, void* stream) {
  check_rows("softmax_backward", dtype, rows, L);
  if (rows == 0 || L == 0) return;
  DF_CHECK(dy && y && dx, "softmax_backward: null pointer");
  if (dtype == DType::f32) return softmax_backward_t<float>(dy, y, dx, rows, L, stream);
  return softmax_backward_t<__nv_bfloat16>(dy, y, dx, rows, L, stream);
}

void cross_entropy_forward(const float* logits, const int64_t* labels, float* lse, float* row_loss, float* loss,
                           int64_t B, int64_t K, void* stream) {
  DF_CHECK(B > 0 && K > 0, "cross_entropy_forward: empty logits ", B, " x ", K);
  DF_CHECK(logits && labels && lse && row_loss && loss, "cross_entropy_forward: null pointer");
  if (K <= kWarpRowMax) {
    DF_LAUNCH(cross_entropy_rows_kernel<32>, dim3(row_grid(B, 32)), dim3(kBlock), 0, stream, logits, labels, lse,
              row_loss, B, K);
  } else {
    DF_LAUNCH(cross_entropy_rows_kernel<kBlock>, dim3(row_grid(B, kBlock)), dim3(kBlock), 0, stream, logits, labels,
              lse, row_loss, B, K);
  }
  DF_LAUNCH(mean_kernel, dim3(1), dim3(kMeanBlock), 0, stream, static_cast<const float*>(row_loss), B, loss);
}

void cross_entropy_backward(const float* dloss, const float* logits, const int64_t* labels, const float* lse,
                            float* dlogits, int64_t B, int64_t K, void* stream) {
  DF_CHECK(B > 0 && K > 0, "cross_entropy_backward: empty logits ", B, " x ", K);
  DF_CHECK(dloss && logits && labels && lse && dlogits, "cross_entropy_backward: null pointer");
  DF_LAUNCH(cross_entropy_backward_kernel, dim3(detail::grid_for(B * K, kBlock)), dim3(kBlock), 0, stream, dloss,
            logits, labels, lse, dlogits, B, K);
}

}  // namespace diffuse::DF_BACKEND

// ---- The Tensor-level op on a GPU -----------------------------------------------------------------
// the Tensor-level softmax and cross-entropy over the launchers of
// kernels/cuda/softmax.cu (the cross-entropy is f32 whatever the activations' dtype). Checks what
// the launchers cannot, allocates outputs and workspaces from the caching allocator and launches on
// the current stream; nothing here waits for the device.
#if DF_DEVICE_BUILD

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

#endif  // DF_DEVICE_BUILD
