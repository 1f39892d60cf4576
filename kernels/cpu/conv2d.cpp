// conv2d on the cpu, NHWC.
//
// Shapes: x (B, H, W, Cin), w (Cout, KH, KW, Cin), y (B, Ho, Wo, Cout) with
// Ho = (H + 2 pad - KH) / stride + 1. One output pixel is the dot product of its input patch
// (KH*KW*Cin values, Cin-contiguous runs in NHWC) with a weight row, so the whole convolution is
// one GEMM of the patch matrix "cols" (B*Ho*Wo, KH*KW*Cin) with w^T. A 1x1 stride-1 convolution
// needs no cols at all: x itself is that matrix.
//
// Backward: dW = G^T cols (one GEMM), dcols = G W (one GEMM) scattered back into dx (col2im),
// db = column sums of G.
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "kernels/gemm.h"
#include "kernels/linalg.h"

namespace diffuse::kernels {

namespace ref {

template <class T>
void conv2d_forward(const T* x, const T* w, const T* bias, T* y, int64_t B, int64_t H, int64_t W, int64_t Cin,
                    int64_t Cout, int64_t KH, int64_t KW, int stride, int pad, int64_t Ho, int64_t Wo) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t ho = 0; ho < Ho; ++ho)
      for (int64_t wo = 0; wo < Wo; ++wo)
        for (int64_t co = 0; co < Cout; ++co) {
          double acc = bias ? static_cast<double>(bias[co]) : 0.0;
          for (int64_t kh = 0; kh < KH; ++kh)
            for (int64_t kw = 0; kw < KW; ++kw) {
              int64_t hi = ho * stride - pad + kh, wi = wo * stride - pad + kw;
              if (hi < 0 || hi >= H || wi < 0 || wi >= W) continue;
              for (int64_t ci = 0; ci < Cin; ++ci)
                acc += static_cast<double>(x[((b * H + hi) * W + wi) * Cin + ci]) *
                       static_cast<double>(w[((co * KH + kh) * KW + kw) * Cin + ci]);
            }
          y[((b * Ho + ho) * Wo + wo) * Cout + co] = static_cast<T>(acc);
        }
}

template <class T>
void conv2d_backward(const T* g, const T* x, const T* w, T* dx, T* dw, T* db, int64_t B, int64_t H, int64_t W,
                     int64_t Cin, int64_t Cout, int64_t KH, int64_t KW, int stride, int pad, int64_t Ho, int64_t Wo) {
  if (dx) std::fill(dx, dx + B * H * W * Cin, T(0));
  if (dw) std::fill(dw, dw + Cout * KH * KW * Cin, T(0));
  if (db) std::fill(db, db + Cout, T(0));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t ho = 0; ho < Ho; ++ho)
      for (int64_t wo = 0; wo < Wo; ++wo)
        for (int64_t co = 0; co < Cout; ++co) {
          T gv = g[((b * Ho + ho) * Wo + wo) * Cout + co];
          if (db) db[co] += gv;
          for (int64_t kh = 0; kh < KH; ++kh)
            for (int64_t kw = 0; kw < KW; ++kw) {
              int64_t hi = ho * stride - pad + kh, wi = wo * stride - pad + kw;
              if (hi < 0 || hi >= H || wi < 0 || wi >= W) continue;
              for (int64_t ci = 0; ci < Cin; ++ci) {
                int64_t xi = ((b * H + hi) * W + wi) * Cin + ci, wi2 = ((co * KH + kh) * KW + kw) * Cin + ci;
                if (dx) dx[xi] += gv * w[wi2];
                if (dw) dw[wi2] += gv * x[xi];
              }
            }
        }
}

template void conv2d_forward<float>(const float*, const float*, const float*, float*, int64_t, int64_t, int64_t,
                                    int64_t, int64_t, int64_t, int64_t, int, int, int64_t, int64_t);
template void conv2d_forward<double>(const double*, const double*, const double*, double*, int64_t, int64_t, int64_t,
                                     int64_t, int64_t, int64_t, int64_t, int, int, int64_t, int64_t);
template void conv2d_backward<float>(const float*, const float*, const float*, float*, float*, float*, int64_t,
                                     int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int64_t, int64_t);
template void conv2d_backward<double>(const double*, const double*, const double*, double*, double*, double*, int64_t,
                                      int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int64_t, int64_t);

}  // namespace ref

namespace {

struct Geometry {
  int64_t B, H, W, Cin, Cout, KH, KW, Ho, Wo;
  int stride, pad;
  int64_t M() const { return B * Ho * Wo; }    // GEMM rows: output pixels
  int64_t K() const { return KH * KW * Cin; }  // GEMM depth: patch length
  bool direct() const { return KH == 1 && KW == 1 && stride == 1 && pad == 0; }  // x is cols
};

Geometry geometry(const Tensor& x, const Tensor& w, const Conv2dParams& p) {
  DF_CHECK(x.dim() == 4, "conv2d: x must be (B,H,W,Cin), got ", x.shape().str());
  DF_CHECK(w.dim() == 4, "conv2d: weight must be (Cout,KH,KW,Cin), got ", w.shape().str());
  DF_CHECK(x.size(3) == w.size(3), "conv2d: x has ", x.size(3), " channels, weight expects ", w.size(3));
  DF_CHECK(p.stride >= 1 && p.padding >= 0, "conv2d: stride ", p.stride, ", padding ", p.padding);
  Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), w.size(1), w.size(2), 0, 0, p.stride, p.padding};
  DF_CHECK(g.H + 2 * g.pad >= g.KH && g.W + 2 * g.pad >= g.KW, "conv2d: kernel ", g.KH, "x", g.KW,
           " larger than the padded input ", x.shape().str());
  g.Ho = (g.H + 2 * g.pad - g.KH) / g.stride + 1;
  g.Wo = (g.W + 2 * g.pad - g.KW) / g.stride + 1;
  return g;
}

// Scratch for the patch matrix, reused across calls: a training step calls conv2d dozens of
// times with a handful of sizes, and a fresh 50 MB allocation each time costs page faults.
template <class T>
T* scratch(size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

template <class T>
void im2col(const T* x, T* cols, const Geometry& g) {
  const int64_t K = g.K();
#pragma omp parallel for collapse(2) if (g.M() * K > 65536)
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t ho = 0; ho < g.Ho; ++ho)
      for (int64_t wo = 0; wo < g.Wo; ++wo) {
        T* row = cols + ((b * g.Ho + ho) * g.Wo + wo) * K;
        for (int64_t kh = 0; kh < g.KH; ++kh) {
          int64_t hi = ho * g.stride - g.pad + kh;
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            int64_t wi = wo * g.stride - g.pad + kw;
            T* dst = row + (kh * g.KW + kw) * g.Cin;
            if (hi < 0 || hi >= g.H || wi < 0 || wi >= g.W)
              std::memset(dst, 0, sizeof(T) * g.Cin);
            else
              std::memcpy(dst, x + ((b * g.H + hi) * g.W + wi) * g.Cin, sizeof(T) * g.Cin);
          }
        }
      }
}

// dx += scatter of dcols. Parallel over images: patches of different images never overlap.
template <class T>
void col2im(const T* cols, T* dx, const Geometry& g) {
  const int64_t K = g.K();
  std::fill(dx, dx + g.B * g.H * g.W * g.Cin, T(0));
#pragma omp parallel for if (g.M() * K > 65536)
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t ho = 0; ho < g.Ho; ++ho)
      for (int64_t wo = 0; wo < g.Wo; ++wo) {
        const T* row = cols + ((b * g.Ho + ho) * g.Wo + wo) * K;
        for (int64_t kh = 0; kh < g.KH; ++kh) {
          int64_t hi = ho * g.stride - g.pad + kh;
          if (hi < 0 || hi >= g.H) continue;
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            int64_t wi = wo * g.stride - g.pad + kw;
            if (wi < 0 || wi >= g.W) continue;
            const T* src = row + (kh * g.KW + kw) * g.Cin;
            T* dst = dx + ((b * g.H + hi) * g.W + wi) * g.Cin;
            for (int64_t c = 0; c < g.Cin; ++c) dst[c] += src[c];
          }
        }
      }
}

template <class T>
void forward_impl(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, const Geometry& g) {
  const T* cols = x.data<T>();
  if (!g.direct()) {
    T* c = scratch<T>(static_cast<size_t>(g.M() * g.K()));
    im2col(x.data<T>(), c, g);
    cols = c;
  }
  T* yp = y.data<T>();
  T beta = T(0);
  if (bias.defined()) {  // seed the output with the bias and let the GEMM accumulate onto it
    const T* bp = bias.data<T>();
#pragma omp parallel for if (g.M() * g.Cout > 65536)
    for (int64_t m = 0; m < g.M(); ++m) std::memcpy(yp + m * g.Cout, bp, sizeof(T) * g.Cout);
    beta = T(1);
  }
  gemm(false, true, g.M(), g.Cout, g.K(), T(1), cols, g.K(), w.data<T>(), g.K(), beta, yp, g.Cout);
}

template <class T>
void backward_impl(const Tensor& gy, const Tensor& x, const Tensor& w, Conv2dGrads& r, const Geometry& g) {
  const T* gp = gy.data<T>();
  const int64_t M = g.M(), K = g.K(), N = g.Cout;
  if (r.dw.defined()) {
    const T* cols = x.data<T>();
    if (!g.direct()) {
      T* c = scratch<T>(static_cast<size_t>(M * K));
      im2col(x.data<T>(), c, g);
      cols = c;
    }
    gemm(true, false, N, K, M, T(1), gp, N, cols, K, T(0), r.dw.data<T>(), K);
  }
  if (r.db.defined()) {
    std::vector<double> acc(static_cast<size_t>(N), 0.0);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) acc[n] += gp[m * N + n];
    for (int64_t n = 0; n < N; ++n) r.db.data<T>()[n] = static_cast<T>(acc[n]);
  }
  if (r.dx.defined()) {
    if (g.direct()) {
      gemm(false, false, M, K, N, T(1), gp, N, w.data<T>(), K, T(0), r.dx.data<T>(), K);
    } else {
      // The cols scratch is free again (dW is done): reuse it for dcols.
      T* dcols = scratch<T>(static_cast<size_t>(M * K));
      gemm(false, false, M, K, N, T(1), gp, N, w.data<T>(), K, T(0), dcols, K);
      col2im(dcols, r.dx.data<T>(), g);
    }
  }
}

}  // namespace

Shape conv2d_output_shape(const Shape& xs, const Shape& ws, const Conv2dParams& p) {
  int64_t Ho = (xs[1] + 2 * p.padding - ws[1]) / p.stride + 1, Wo = (xs[2] + 2 * p.padding - ws[2]) / p.stride + 1;
  return Shape{xs[0], Ho, Wo, ws[0]};
}

Tensor conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dParams& p) {
  DF_CHECK(x.device().is_cpu(), "conv2d on ", x.device().str(), " needs the CUDA backend");
  DF_CHECK(x.dtype() == w.dtype() && (x.dtype() == DType::f32 || x.dtype() == DType::f64), "conv2d: x ", x.str(),
           ", weight ", w.str(), " (cpu: f32 or f64, the same)");
  Geometry g = geometry(x, w, p);
  DF_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == g.Cout), "conv2d: bias ", bias.shape().str(),
           " for ", g.Cout, " output channels");
  Tensor y = Tensor::empty({g.B, g.Ho, g.Wo, g.Cout}, x.dtype());
  if (x.dtype() == DType::f64)
    forward_impl<double>(x, w, bias, y, g);
  else
    forward_impl<float>(x, w, bias, y, g);
  return y;
}

Conv2dGrads conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w, const Conv2dParams& p, bool need_x,
                             bool need_w, bool need_b) {
  Geometry g = geometry(x, w, p);
  DF_CHECK(gy.shape() == Shape({g.B, g.Ho, g.Wo, g.Cout}), "conv2d backward: gradient ", gy.shape().str(),
           " for output (", g.B, ", ", g.Ho, ", ", g.Wo, ", ", g.Cout, ")");
  Conv2dGrads r;
  if (need_x) r.dx = Tensor::empty(x.shape(), x.dtype());
  if (need_w) r.dw = Tensor::empty(w.shape(), w.dtype());
  if (need_b) r.db = Tensor::empty({g.Cout}, w.dtype());
  if (x.dtype() == DType::f64)
    backward_impl<double>(gy, x, w, r, g);
  else
    backward_impl<float>(gy, x, w, r, g);
  return r;
}

}  // namespace diffuse::kernels
