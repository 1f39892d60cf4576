// kernels/softmax.cpp: softmax over the last dimension (kernels/softmax.h): the cpu reference and
// fast path, and the Tensor-level op, which runs on x's device: the cpu here or the kernels of
// kernels/cuda/softmax.cu.
//
// Shape glossary: R rows (every leading dimension flattened), L the length of the last dim.
// The max of a row is subtracted before exp (softmax is shift-invariant), so exp never overflows
// and the largest term is exactly 1: the sum is >= 1 and the division is safe.
#include "kernels/softmax.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/cpu/vec_math.h"

namespace diffuse::kernels {

namespace cpu {
// The fast rows: the sum in T (rows are short: attention rows have <= a few hundred entries, and
// every term is in (0, 1], so the f32 sum is accurate to ~L * 6e-8 relative), loops vectorise.
template <class T>
void softmax_row(const T* x, T* y, int64_t L) {
  T mx = x[0];
  for (int64_t j = 1; j < L; ++j) mx = std::max(mx, x[j]);
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < L; ++j) {
    y[j] = exp_vec(x[j] - mx);
    sum += y[j];
  }
  const T inv = T(1) / sum;
#pragma omp simd
  for (int64_t j = 0; j < L; ++j) y[j] *= inv;
}

template <class T>
void softmax_backward_row(const T* dy, const T* y, T* dx, int64_t L) {
  T dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t j = 0; j < L; ++j) dot += dy[j] * y[j];
#pragma omp simd
  for (int64_t j = 0; j < L; ++j) dx[j] = y[j] * (dy[j] - dot);
}

template void softmax_row<float>(const float*, float*, int64_t);
template void softmax_row<double>(const double*, double*, int64_t);
template void softmax_backward_row<float>(const float*, const float*, float*, int64_t);
template void softmax_backward_row<double>(const double*, const double*, double*, int64_t);
}  // namespace cpu

namespace {

int64_t row_len(const Tensor& x) {
  DF_CHECK(x.dim() >= 1 && x.size(-1) > 0, "softmax_last: needs a non-empty last dim, got ", x.str());
  DF_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::f64, "softmax_last: f32 or f64, got ", x.str());
  return x.size(-1);
}

// One row, shared by both paths: the reference accumulates the sum in double.
template <class T>
void softmax_row_ref(const T* x, T* y, int64_t L) {
  T mx = x[0];
  for (int64_t j = 1; j < L; ++j) mx = std::max(mx, x[j]);
  double sum = 0;
  for (int64_t j = 0; j < L; ++j) sum += std::exp(static_cast<double>(x[j]) - mx);
  for (int64_t j = 0; j < L; ++j) y[j] = static_cast<T>(std::exp(static_cast<double>(x[j]) - mx) / sum);
}

template <class T>
void softmax_backward_row_ref(const T* dy, const T* y, T* dx, int64_t L) {
  double dot = 0;
  for (int64_t j = 0; j < L; ++j) dot += static_cast<double>(dy[j]) * y[j];
  for (int64_t j = 0; j < L; ++j) dx[j] = static_cast<T>(y[j] * (dy[j] - dot));
}

template <class T>
void forward_impl(const Tensor& x, Tensor& y, bool fast) {
  const int64_t L = row_len(x), R = x.numel() / L;
  check_same_shape(y, x, "softmax_last y");
  check_dtype(y, x.dtype(), "softmax_last y");
  const T* xp = x.data<T>();
  T* yp = y.data<T>();
  if (!fast) {
    for (int64_t r = 0; r < R; ++r) softmax_row_ref(xp + r * L, yp + r * L, L);
    return;
  }
#pragma omp parallel for schedule(static) if (R * L > 16384)
  for (int64_t r = 0; r < R; ++r) cpu::softmax_row(xp + r * L, yp + r * L, L);
}

template <class T>
void backward_impl(const Tensor& dy, const Tensor& y, Tensor& dx, bool fast) {
  const int64_t L = row_len(y), R = y.numel() / L;
  check_same_shape(dy, y, "softmax_last dy");
  check_same_shape(dx, y, "softmax_last dx");
  check_dtype(dy, y.dtype(), "softmax_last dy");
  check_dtype(dx, y.dtype(), "softmax_last dx");
  const T *dp = dy.data<T>(), *yp = y.data<T>();
  T* xp = dx.data<T>();
  if (!fast) {
    for (int64_t r = 0; r < R; ++r) softmax_backward_row_ref(dp + r * L, yp + r * L, xp + r * L, L);
    return;
  }
#pragma omp parallel for schedule(static) if (R * L > 16384)
  for (int64_t r = 0; r < R; ++r) cpu::softmax_backward_row(dp + r * L, yp + r * L, xp + r * L, L);
}

}  // namespace


namespace cpu {
void softmax_last_forward(const Tensor& x, Tensor& y) {
  if (x.dtype() == DType::f32) forward_impl<float>(x, y, true);
  else forward_impl<double>(x, y, true);
}
void softmax_last_backward(const Tensor& dy, const Tensor& y, Tensor& dx) {
  if (y.dtype() == DType::f32) backward_impl<float>(dy, y, dx, true);
  else backward_impl<double>(dy, y, dx, true);
}
}  // namespace cpu

namespace ref {
void softmax_last_forward(const Tensor& x, Tensor& y) {
  if (x.dtype() == DType::f32) forward_impl<float>(x, y, false);
  else forward_impl<double>(x, y, false);
}
void softmax_last_backward(const Tensor& dy, const Tensor& y, Tensor& dx) {
  if (y.dtype() == DType::f32) backward_impl<float>(dy, y, dx, false);
  else backward_impl<double>(dy, y, dx, false);
}
}  // namespace ref

}  // namespace diffuse::kernels

namespace diffuse::kernels {

Tensor softmax_last_forward(const Tensor& x) {
  DF_PROFILE("softmax_last_forward");
  if (x.device().is_cpu()) {
    Tensor y = Tensor::empty(x.shape(), x.dtype());
    cpu::softmax_last_forward(x, y);
    return y;
  }
  DF_ON_CUDA(x.device(), cuda::softmax_last_forward(x));
  unsupported_device("softmax_last", x.device());
}

Tensor softmax_last_backward(const Tensor& dy, const Tensor& y) {
  DF_PROFILE("softmax_last_backward");
  if (y.device().is_cpu()) {
    Tensor dx = Tensor::empty(y.shape(), y.dtype());
    cpu::softmax_last_backward(dy, y, dx);
    return dx;
  }
  DF_ON_CUDA(y.device(), cuda::softmax_last_backward(dy, y));
  unsupported_device("softmax_last", y.device());
}

}  // namespace diffuse::kernels
