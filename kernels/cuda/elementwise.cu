// kernels/cuda/elementwise.cu: memory-bound elementwise kernels (SiLU forward and backward,
// axpby). Launchers declared in kernels/cuda/elementwise.h.
//
// Each kernel reads and writes every element once, so its speed is DRAM bandwidth: 16-byte
// loads and stores (4 floats or 8 bf16) when every pointer is 16-byte aligned, in a grid-stride
// loop; the remainder (and any unaligned call, e.g. a slice) takes the one-element loop. Math is
// in f32 with the full-precision expf (a few more instructions per element are free here).
#include "kernels/cuda/portable.cuh"

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.h"

namespace diffuse::DF_BACKEND {

namespace {

using detail::Pack;

// 256 threads: whole warps, and 8 resident blocks per SM for these register-light loops.
constexpr int kBlock = 256;

DF_DEVICE_INLINE float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
DF_DEVICE_INLINE float silu_f(float x) { return x * sigmoidf(x); }
// d/dx x s(x) = s + x s (1 - s) = s (1 + x (1 - s))
DF_DEVICE_INLINE float silu_grad_f(float x) {
  const float s = sigmoidf(x);
  return s * (1.0f + x * (1.0f - s));
}

// The first element index of the one-element loop, and the number of packs before it.
template <class T>
DF_DEVICE_INLINE int64_t packs_of(int64_t n, bool vec) {
  return vec ? n / Pack<T>::n : 0;
}

template <class T>
__global__ void __launch_bounds__(kBlock) silu_forward_kernel(const T* x, T* y, int64_t n, bool vec) {
  constexpr int V = Pack<T>::n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t np = packs_of<T>(n, vec);
  for (int64_t c = tid; c < np; c += stride) {
    Pack<T> v = detail::load_pack(x + c * V);
    for (int k = 0; k < V; ++k) v.v[k] = detail::from_f32<T>(silu_f(detail::to_f32(v.v[k])));
    detail::store_pack(y + c * V, v);
  }
  for (int64_t i = np * V + tid; i < n; i += stride) y[i] = detail::from_f32<T>(silu_f(detail::to_f32(x[i])));
}

template <class T>
__global__ void __launch_bounds__(kBlock) silu_backward_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                                                               T* __restrict__ dx, int64_t n, bool accumulate,
                                                               bool vec) {
  constexpr int V = Pack<T>::n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t np = packs_of<T>(n, vec);
  for (int64_t c = tid; c < np; c += stride) {
    const Pack<T> xv = detail::load_pack(x + c * V), gv = detail::load_pack(dy + c * V);
    Pack<T> out{};
    if (accumulate) out = detail::load_pack(dx + c * V);
    for (int k = 0; k < V; ++k) {
      float g = detail::to_f32(gv.v[k]) * silu_grad_f(detail::to_f32(xv.v[k]));
      if (accumulate) g += detail::to_f32(out.v[k]);
      out.v[k] = detail::from_f32<T>(g);
    }
    detail::store_pack(dx + c * V, out);
  }
  for (int64_t i = np * V + tid; i < n; i += stride) {
    float g = detail::to_f32(dy[i]) * silu_grad_f(detail::to_f32(x[i]));
    if (accumulate) g += detail::to_f32(dx[i]);
    dx[i] = detail::from_f32<T>(g);
  }
}

// y = a x + b y; b == 0 does not read y, so y may hold garbage (or NaN poison), as in BLAS.
__global__ void __launch_bounds__(kBlock) axpby_kernel(float a, const float* __restrict__ x, float b,
                                                       float* __restrict__ y, int64_t n, bool vec) {
  constexpr int V = Pack<float>::n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t np = packs_of<float>(n, vec);
  const bool read_y = b != 0.0f;
  for (int64_t c = tid; c < np; c += stride) {
    const Pack<float> xv = detail::load_pack(x + c * V);
    Pack<float> yv{};
    if (read_y) yv = detail::load_pack(y + c * V);
    for (int k = 0; k < V; ++k) yv.v[k] = read_y ? a * xv.v[k] + b * yv.v[k] : a * xv.v[k];
    detail::store_pack(y + c * V, yv);
  }
  for (int64_t i = np * V + tid; i < n; i += stride) y[i] = read_y ? a * x[i] + b * y[i] : a * x[i];
}

void check_args(const char* op, int64_t n, DType dtype) {
  DF_CHECK(n >= 0, op, ": negative size ", n);
  DF_CHECK(dtype == DType::f32 || dtype == DType::bf16, op, ": dtype ", dtype_name(dtype),
           " (expected f32 or bf16)");
}

template <class T>
unsigned grid_of(int64_t n) {
  return detail::grid_for((n + Pack<T>::n - 1) / Pack<T>::n, kBlock);
}

}  // namespace

void silu_forward(const void* x, void* y, DType dtype, int64_t n, void* stream) {
  check_args("silu_forward", n, dtype);
  if (n == 0) return;
  DF_CHECK(x && y, "silu_forward: null pointer");
  const bool vec = detail::aligned16(x) && detail::aligned16(y);
  if (dtype == DType::f32) {
    DF_LAUNCH(silu_forward_kernel<float>, dim3(grid_of<float>(n)), dim3(kBlock), 0, stream,
              static_cast<const float*>(x), static_cast<float*>(y), n, vec);
  } else {
    DF_LAUNCH(silu_forward_kernel<__nv_bfloat16>, dim3(grid_of<__nv_bfloat16>(n)), dim3(kBlock), 0, stream,
              static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(y), n, vec);
  }
}

void silu_backward(const void* x, const void* dy, void* dx, DType dtype, int64_t n, bool accumulate, void* stream) {
  check_args("silu_backward", n, dtype);
  if (n == 0) return;
  DF_CHECK(x && dy && dx, "silu_backward: null pointer");
  const bool vec = detail::aligned16(x) && detail::aligned16(dy) && detail::aligned16(dx);
  if (dtype == DType::f32) {
    DF_LAUNCH(silu_backward_kernel<float>, dim3(grid_of<float>(n)), dim3(kBlock), 0, stream,
              static_cast<const float*>(x), static_cast<const float*>(dy), static_cast<float*>(dx), n, accumulate,
              vec);
  } else {
    DF_LAUNCH(silu_backward_kernel<__nv_bfloat16>, dim3(grid_of<__nv_bfloat16>(n)), dim3(kBlock), 0, stream,
              static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(dy),
              static_cast<__nv_bfloat16*>(dx), n, accumulate, vec);
  }
}

void axpby(float a, const float* x, float b, float* y, int64_t n, void* stream) {
  DF_CHECK(n >= 0, "axpby: negative size ", n);
  if (n == 0) return;
  DF_CHECK(x && y, "axpby: null pointer");
  const bool vec = detail::aligned16(x) && detail::aligned16(y);
  DF_LAUNCH(axpby_kernel, dim3(grid_of<float>(n)), dim3(kBlock), 0, stream, a, x, b, y, n, vec);
}

}  // namespace diffuse::DF_BACKEND
