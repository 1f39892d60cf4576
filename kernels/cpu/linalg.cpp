// Matrix products, resampling and channel concat on the cpu.
// Shapes: B batch, H W spatial, C channels; a matrix operand is row-major (rows, cols).
#include <cstring>

#include "core/check.h"
#include "kernels/gemm.h"
#include "kernels/linalg.h"

namespace diffuse::kernels {

namespace {

void check_cpu_float(const Tensor& t, const char* what) {
  DF_CHECK(t.device().is_cpu(), what, " on ", t.device().str(), " needs the CUDA backend");
  DF_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, what, ": ", t.str(), " (cpu ops take f32 or f64)");
}

template <class T>
void gemm_t(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
            T beta, T* C, int64_t ldc) {
  gemm(ta, tb, M, N, K, T(1), A, lda, B, ldb, beta, C, ldc);
}

template <class F>
void with_float_type(DType t, F&& f) {
  if (t == DType::f64)
    f(double{});
  else
    f(float{});
}

}  // namespace

// ---- matmul ----------------------------------------------------------------------------------

Tensor matmul_forward(const Tensor& a, const Tensor& b) {
  check_cpu_float(a, "matmul");
  DF_CHECK(a.dtype() == b.dtype(), "matmul: dtypes differ: ", a.str(), " x ", b.str());
  DF_CHECK((a.dim() == 2 && b.dim() == 2) || (a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0)),
           "matmul: expected (M,K)x(K,N) or (Bt,M,K)x(Bt,K,N), got ", a.shape().str(), " x ", b.shape().str());
  DF_CHECK(a.size(-1) == b.size(-2), "matmul: inner sizes differ: ", a.shape().str(), " x ", b.shape().str());
  int64_t Bt = a.dim() == 3 ? a.size(0) : 1, M = a.size(-2), K = a.size(-1), N = b.size(-1);
  Tensor y = a.dim() == 3 ? Tensor::empty({Bt, M, N}, a.dtype()) : Tensor::empty({M, N}, a.dtype());
  with_float_type(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < Bt; ++i)
      gemm_t<T>(false, false, M, N, K, a.data<T>() + i * M * K, K, b.data<T>() + i * K * N, N, T(0),
                y.data<T>() + i * M * N, N);
  });
  return y;
}

MatmulGrads matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b, bool need_a, bool need_b) {
  int64_t Bt = a.dim() == 3 ? a.size(0) : 1, M = a.size(-2), K = a.size(-1), N = b.size(-1);
  MatmulGrads r;
  if (need_a) r.da = Tensor::empty(a.shape(), a.dtype());
  if (need_b) r.db = Tensor::empty(b.shape(), b.dtype());
  with_float_type(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < Bt; ++i) {
      const T* gi = g.data<T>() + i * M * N;
      if (need_a)  // dA = G B^T
        gemm_t<T>(false, true, M, K, N, gi, N, b.data<T>() + i * K * N, N, T(0), r.da.data<T>() + i * M * K, K);
      if (need_b)  // dB = A^T G
        gemm_t<T>(true, false, K, N, M, a.data<T>() + i * M * K, K, gi, N, T(0), r.db.data<T>() + i * K * N, N);
    }
  });
  return r;
}

// ---- linear ----------------------------------------------------------------------------------

Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias) {
  check_cpu_float(x, "linear");
  DF_CHECK(w.dim() == 2 && x.dim() >= 1 && x.size(-1) == w.size(1), "linear: x ", x.shape().str(), " and weight ",
           w.shape().str(), " (Out, In) do not fit");
  DF_CHECK(x.dtype() == w.dtype(), "linear: dtypes differ: ", x.str(), " vs ", w.str());
  int64_t In = w.size(1), Out = w.size(0), M = x.numel() / In;
  DF_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == Out), "linear: bias ", bias.shape().str(),
           " for ", Out, " outputs");
  std::vector<int64_t> ys = x.shape().vec();
  ys.back() = Out;
  Tensor y = Tensor::empty(Shape(ys), x.dtype());
  with_float_type(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* yp = y.data<T>();
    T beta = T(0);
    if (bias.defined()) {  // start C at the bias so the GEMM adds into it: one pass over y
      const T* bp = bias.data<T>();
#pragma omp parallel for if (M * Out > 65536)
      for (int64_t m = 0; m < M; ++m) std::memcpy(yp + m * Out, bp, sizeof(T) * Out);
      beta = T(1);
    }
    gemm_t<T>(false, true, M, Out, In, x.data<T>(), In, w.data<T>(), In, beta, yp, Out);
  });
  return y;
}

LinearGrads linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, bool need_x, bool need_w,
                            bool need_b) {
  int64_t In = w.size(1), Out = w.size(0), M = x.numel() / In;
  LinearGrads r;
  with_float_type(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* gp = g.data<T>();
    if (need_x) {  // dX = G W
      r.dx = Tensor::empty(x.shape(), x.dtype());
      gemm_t<T>(false, false, M, In, Out, gp, Out, w.data<T>(), In, T(0), r.dx.data<T>(), In);
    }
    if (need_w) {  // dW = G^T X
      r.dw = Tensor::empty(w.shape(), w.dtype());
      gemm_t<T>(true, false, Out, In, M, gp, Out, x.data<T>(), In, T(0), r.dw.data<T>(), In);
    }
    if (need_b) {  // column sums of G, accumulated in double
      r.db = Tensor::empty({Out}, x.dtype());
      std::vector<double> acc(static_cast<size_t>(Out), 0.0);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t o = 0; o < Out; ++o) acc[o] += gp[m * Out + o];
      for (int64_t o = 0; o < Out; ++o) r.db.data<T>()[o] = static_cast<T>(acc[o]);
    }
  });
  return r;
}

// ---- resampling ------------------------------------------------------------------------------

Tensor upsample_nearest2x_forward(const Tensor& x) {
  check_cpu_float(x, "upsample_nearest2x");
  DF_CHECK(x.dim() == 4, "upsample_nearest2x: expected (B,H,W,C), got ", x.shape().str());
  int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  Tensor y = Tensor::empty({B, 2 * H, 2 * W, C}, x.dtype());
  size_t bytes = static_cast<size_t>(C) * dtype_size(x.dtype());
  const char* xp = static_cast<const char*>(x.raw());
  char* yp = static_cast<char*>(y.raw());
#pragma omp parallel for collapse(2) if (B * H * W * C > 65536)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < 2 * H; ++h)
      for (int64_t w = 0; w < 2 * W; ++w)
        std::memcpy(yp + (((b * 2 * H + h) * 2 * W) + w) * bytes, xp + ((b * H + h / 2) * W + w / 2) * bytes, bytes);
  return y;
}

Tensor upsample_nearest2x_backward(const Tensor& g) {
  int64_t B = g.size(0), H = g.size(1) / 2, W = g.size(2) / 2, C = g.size(3);
  Tensor dx = Tensor::empty({B, H, W, C}, g.dtype());
  with_float_type(g.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* gp = g.data<T>();
    T* d = dx.data<T>();
#pragma omp parallel for collapse(2) if (B * H * W * C > 16384)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) {
          const T* g00 = gp + ((b * 2 * H + 2 * h) * 2 * W + 2 * w) * C;
          const T* g10 = g00 + 2 * W * C;
          T* o = d + ((b * H + h) * W + w) * C;
          for (int64_t c = 0; c < C; ++c) o[c] = (g00[c] + g00[C + c]) + (g10[c] + g10[C + c]);
        }
  });
  return dx;
}

Tensor avg_pool2x_forward(const Tensor& x) {
  check_cpu_float(x, "avg_pool2x");
  DF_CHECK(x.dim() == 4 && x.size(1) % 2 == 0 && x.size(2) % 2 == 0, "avg_pool2x: expected (B,H,W,C) with even H and W, got ",
           x.shape().str());
  int64_t B = x.size(0), H = x.size(1) / 2, W = x.size(2) / 2, C = x.size(3);
  Tensor y = Tensor::empty({B, H, W, C}, x.dtype());
  with_float_type(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data<T>();
    T* o = y.data<T>();
#pragma omp parallel for collapse(2) if (B * H * W * C > 16384)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) {
          const T* x00 = xp + ((b * 2 * H + 2 * h) * 2 * W + 2 * w) * C;
          const T* x10 = x00 + 2 * W * C;
          T* out = o + ((b * H + h) * W + w) * C;
          for (int64_t c = 0; c < C; ++c) out[c] = T(0.25) * ((x00[c] + x00[C + c]) + (x10[c] + x10[C + c]));
        }
  });
  return y;
}

Tensor avg_pool2x_backward(const Tensor& g) {
  int64_t B = g.size(0), H = g.size(1), W = g.size(2), C = g.size(3);
  Tensor dx = Tensor::empty({B, 2 * H, 2 * W, C}, g.dtype());
  with_float_type(g.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* gp = g.data<T>();
    T* d = dx.data<T>();
#pragma omp parallel for collapse(2) if (B * H * W * C > 16384)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < 2 * H; ++h)
        for (int64_t w = 0; w < 2 * W; ++w) {
          const T* gi = gp + ((b * H + h / 2) * W + w / 2) * C;
          T* o = d + ((b * 2 * H + h) * 2 * W + w) * C;
          for (int64_t c = 0; c < C; ++c) o[c] = T(0.25) * gi[c];
        }
  });
  return dx;
}

// ---- channel concat --------------------------------------------------------------------------

Tensor concat_last_forward(const std::vector<Tensor>& xs) {
  DF_CHECK(!xs.empty(), "concat_last of nothing");
  std::vector<int64_t> lead = xs[0].shape().vec();
  lead.pop_back();
  int64_t total = 0;
  for (const Tensor& t : xs) {
    DF_CHECK(t.device().is_cpu(), "concat_last on ", t.device().str(), " needs the CUDA backend");
    DF_CHECK(t.dtype() == xs[0].dtype(), "concat_last: dtypes differ: ", t.str(), " vs ", xs[0].str());
    std::vector<int64_t> l = t.shape().vec();
    l.pop_back();
    DF_CHECK(l == lead, "concat_last: leading dims differ: ", t.shape().str(), " vs ", xs[0].shape().str());
    total += t.size(-1);
  }
  std::vector<int64_t> ys = lead;
  ys.push_back(total);
  Tensor y = Tensor::empty(Shape(ys), xs[0].dtype());
  int64_t rows = total ? y.numel() / total : 0;
  size_t es = dtype_size(y.dtype());
  char* yp = static_cast<char*>(y.raw());
#pragma omp parallel for if (rows * total > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t off = 0;
    for (const Tensor& t : xs) {
      int64_t c = t.size(-1);
      std::memcpy(yp + (r * total + off) * es, static_cast<const char*>(t.raw()) + r * c * es, c * es);
      off += c;
    }
  }
  return y;
}

Tensor slice_last_forward(const Tensor& x, int64_t begin, int64_t end) {
  DF_CHECK(x.device().is_cpu(), "slice_last on ", x.device().str(), " needs the CUDA backend");
  int64_t C = x.size(-1);
  DF_CHECK(0 <= begin && begin <= end && end <= C, "slice_last [", begin, ", ", end, ") of ", x.shape().str());
  std::vector<int64_t> ys = x.shape().vec();
  ys.back() = end - begin;
  Tensor y = Tensor::empty(Shape(ys), x.dtype());
  int64_t rows = C ? x.numel() / C : 0, c = end - begin;
  size_t es = dtype_size(x.dtype());
  const char* xp = static_cast<const char*>(x.raw());
  char* yp = static_cast<char*>(y.raw());
#pragma omp parallel for if (rows * c > 65536)
  for (int64_t r = 0; r < rows; ++r) std::memcpy(yp + r * c * es, xp + (r * C + begin) * es, c * es);
  return y;
}

Tensor slice_last_backward(const Tensor& g, int64_t total, int64_t begin) {
  std::vector<int64_t> s = g.shape().vec();
  int64_t c = s.back();
  s.back() = total;
  Tensor dx = Tensor::zeros(Shape(s), g.dtype());
  int64_t rows = c ? g.numel() / c : 0;
  size_t es = dtype_size(g.dtype());
  const char* gp = static_cast<const char*>(g.raw());
  char* d = static_cast<char*>(dx.raw());
  for (int64_t r = 0; r < rows; ++r) std::memcpy(d + (r * total + begin) * es, gp + r * c * es, c * es);
  return dx;
}

}  // namespace diffuse::kernels
