// kernels/resample.cpp: the UNet's 2x resampling, 2x nearest upsampling and 2x2 average pooling,
// NHWC (kernels/resample.h): the cpu reference and fast path, and the Tensor-level ops, which run
// on the input's device: the cpu here or kernels/cuda/resample.cu.
//
// Shapes: B batch, H W the small grid, C channels; the large grid is (2H, 2W). Each pixel is a
// contiguous run of C values, so the fast path moves whole runs (memcpy, or a C-long loop that
// vectorises) with OpenMP over (b, h); the reference loops over every output element.
#include "kernels/resample.h"

#include <cstring>

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"

namespace diffuse::kernels {

namespace {

// Below this many elements a thread team costs more than the copy.
constexpr int64_t kParallelMin = 16384;

void check_float_image(const Tensor& t, const char* what) {
  DF_CHECK(t.device().is_cpu() && (t.dtype() == DType::f32 || t.dtype() == DType::f64) && t.dim() == 4, what,
           ": expected an f32 or f64 (B,H,W,C) tensor on the cpu, got ", t.str());
}

void check_out(const Tensor& t, const Shape& s, DType dt, const char* what) {
  DF_CHECK(t.defined() && t.shape() == s && t.dtype() == dt && t.device().is_cpu(), what, ": output is ", t.str(),
           ", expected ", s.str());
}

Shape up_shape(const Tensor& small) {
  return Shape{small.size(0), 2 * small.size(1), 2 * small.size(2), small.size(3)};
}

Shape down_shape(const Tensor& large, const char* what) {
  DF_CHECK(large.size(1) % 2 == 0 && large.size(2) % 2 == 0, what, ": H and W must be even, got ",
           large.shape().str());
  return Shape{large.size(0), large.size(1) / 2, large.size(2) / 2, large.size(3)};
}

template <class F>
void dispatch(DType t, F&& f) {
  if (t == DType::f64)
    f(double{});
  else
    f(float{});
}

// ---- fast path: runs of C ----

template <class T>
void up_fast(const T* x, T* y, int64_t B, int64_t H, int64_t W, int64_t C) {
#pragma omp parallel for collapse(2) if (B * H * W * C > kParallelMin)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      T* row = y + (b * 2 * H + 2 * h) * 2 * W * C;  // output row 2h; row 2h+1 is its copy
      for (int64_t w = 0; w < W; ++w) {
        const T* src = x + ((b * H + h) * W + w) * C;
        std::memcpy(row + 2 * w * C, src, sizeof(T) * C);
        std::memcpy(row + (2 * w + 1) * C, src, sizeof(T) * C);
      }
      std::memcpy(row + 2 * W * C, row, sizeof(T) * 2 * W * C);
    }
}

// Sums 2x2 blocks of the large grid times `scale`: the upsample backward (scale 1) and the pool
// forward (scale 1/4) are the same loop.
template <class T>
void block_sum_fast(const T* big, T* small, int64_t B, int64_t H, int64_t W, int64_t C, T scale) {
#pragma omp parallel for collapse(2) if (B * H * W * C > kParallelMin)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) {
        const T* p00 = big + ((b * 2 * H + 2 * h) * 2 * W + 2 * w) * C;
        const T* p10 = p00 + 2 * W * C;
        T* o = small + ((b * H + h) * W + w) * C;
        // Summed in the reference's order, so the two agree exactly.
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = scale * (((p00[c] + p00[C + c]) + p10[c]) + p10[C + c]);
      }
}

// Spreads small * scale over each 2x2 block: the pool backward (scale 1/4).
template <class T>
void spread_fast(const T* small, T* big, int64_t B, int64_t H, int64_t W, int64_t C, T scale) {
#pragma omp parallel for collapse(2) if (B * H * W * C > kParallelMin)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      T* row = big + (b * 2 * H + 2 * h) * 2 * W * C;
      for (int64_t w = 0; w < W; ++w) {
        const T* s = small + ((b * H + h) * W + w) * C;
        T* o = row + 2 * w * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = o[C + c] = scale * s[c];
      }
      std::memcpy(row + 2 * W * C, row, sizeof(T) * 2 * W * C);
    }
}

// ---- reference: one output element at a time ----

template <class T>
void up_ref(const T* x, T* y, int64_t B, int64_t H, int64_t W, int64_t C) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < 2 * H; ++h)
      for (int64_t w = 0; w < 2 * W; ++w)
        for (int64_t c = 0; c < C; ++c)
          y[((b * 2 * H + h) * 2 * W + w) * C + c] = x[((b * H + h / 2) * W + w / 2) * C + c];
}

template <class T>
void block_sum_ref(const T* big, T* small, int64_t B, int64_t H, int64_t W, int64_t C, T scale) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w)
        for (int64_t c = 0; c < C; ++c) {
          T acc = 0;
          for (int64_t dh = 0; dh < 2; ++dh)
            for (int64_t dw = 0; dw < 2; ++dw) acc += big[((b * 2 * H + 2 * h + dh) * 2 * W + 2 * w + dw) * C + c];
          small[((b * H + h) * W + w) * C + c] = scale * acc;
        }
}

template <class T>
void spread_ref(const T* small, T* big, int64_t B, int64_t H, int64_t W, int64_t C, T scale) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < 2 * H; ++h)
      for (int64_t w = 0; w < 2 * W; ++w)
        for (int64_t c = 0; c < C; ++c)
          big[((b * 2 * H + h) * 2 * W + w) * C + c] = scale * small[((b * H + h / 2) * W + w / 2) * C + c];
}

// Shared argument handling; Ref picks the reference loops.
template <bool Ref>
void upsample_fwd(const Tensor& x, Tensor& y) {
  check_float_image(x, "upsample_nearest2x");
  check_out(y, up_shape(x), x.dtype(), "upsample_nearest2x");
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    (Ref ? up_ref<T> : up_fast<T>)(x.data<T>(), y.data<T>(), x.size(0), x.size(1), x.size(2), x.size(3));
  });
}

template <bool Ref>
void upsample_bwd(const Tensor& g, Tensor& dx) {
  check_float_image(g, "upsample_nearest2x backward");
  const Shape s = down_shape(g, "upsample_nearest2x backward");
  check_out(dx, s, g.dtype(), "upsample_nearest2x backward");
  dispatch(g.dtype(), [&](auto tag) {
    using T = decltype(tag);
    (Ref ? block_sum_ref<T> : block_sum_fast<T>)(g.data<T>(), dx.data<T>(), s[0], s[1], s[2], s[3], T(1));
  });
}

template <bool Ref>
void pool_fwd(const Tensor& x, Tensor& y) {
  check_float_image(x, "avg_pool2x");
  const Shape s = down_shape(x, "avg_pool2x");
  check_out(y, s, x.dtype(), "avg_pool2x");
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    (Ref ? block_sum_ref<T> : block_sum_fast<T>)(x.data<T>(), y.data<T>(), s[0], s[1], s[2], s[3], T(0.25));
  });
}

template <bool Ref>
void pool_bwd(const Tensor& g, Tensor& dx) {
  check_float_image(g, "avg_pool2x backward");
  check_out(dx, up_shape(g), g.dtype(), "avg_pool2x backward");
  dispatch(g.dtype(), [&](auto tag) {
    using T = decltype(tag);
    (Ref ? spread_ref<T> : spread_fast<T>)(g.data<T>(), dx.data<T>(), g.size(0), g.size(1), g.size(2), g.size(3),
                                           T(0.25));
  });
}

}  // namespace

namespace cpu {
void upsample_nearest2x_forward(const Tensor& x, Tensor& y) { upsample_fwd<false>(x, y); }
void upsample_nearest2x_backward(const Tensor& g, Tensor& dx) { upsample_bwd<false>(g, dx); }
void avg_pool2x_forward(const Tensor& x, Tensor& y) { pool_fwd<false>(x, y); }
void avg_pool2x_backward(const Tensor& g, Tensor& dx) { pool_bwd<false>(g, dx); }
}  // namespace cpu

namespace ref {
void upsample_nearest2x_forward(const Tensor& x, Tensor& y) { upsample_fwd<true>(x, y); }
void upsample_nearest2x_backward(const Tensor& g, Tensor& dx) { upsample_bwd<true>(g, dx); }
void avg_pool2x_forward(const Tensor& x, Tensor& y) { pool_fwd<true>(x, y); }
void avg_pool2x_backward(const Tensor& g, Tensor& dx) { pool_bwd<true>(g, dx); }
}  // namespace ref

namespace cpu {

Tensor upsample_nearest2x_forward(const Tensor& x) {
  check_float_image(x, "upsample_nearest2x");
  Tensor y = Tensor::empty(up_shape(x), x.dtype());
  cpu::upsample_nearest2x_forward(x, y);
  return y;
}

Tensor upsample_nearest2x_backward(const Tensor& g) {
  check_float_image(g, "upsample_nearest2x backward");
  Tensor dx = Tensor::empty(down_shape(g, "upsample_nearest2x backward"), g.dtype());
  cpu::upsample_nearest2x_backward(g, dx);
  return dx;
}

Tensor avg_pool2x_forward(const Tensor& x) {
  check_float_image(x, "avg_pool2x");
  Tensor y = Tensor::empty(down_shape(x, "avg_pool2x"), x.dtype());
  cpu::avg_pool2x_forward(x, y);
  return y;
}

Tensor avg_pool2x_backward(const Tensor& g) {
  check_float_image(g, "avg_pool2x backward");
  Tensor dx = Tensor::empty(up_shape(g), g.dtype());
  cpu::avg_pool2x_backward(g, dx);
  return dx;
}

}  // namespace cpu

}  // namespace diffuse::kernels

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
