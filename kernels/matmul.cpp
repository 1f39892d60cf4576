// kernels/matmul.cpp: matrix products, matmul (2-D and batched) and linear, forward and backward
// (kernels/matmul.h): the cpu reference and fast path (OpenBLAS or the blocked loops), and the
// Tensor-level ops, which run on the operands' device: the cpu here or cuBLASLt
// (kernels/cuda/gemm_cuda.cpp; linear's bias in the GEMM's epilogue).
//
// Shapes: Bt batch of matrices; a (M,K), b (K,N), y (M,N), all row-major. linear: x viewed as
// (M, In) with M = numel / In, w (Out, In), y (M, Out).
// Rules (row-major, G the gradient of y):
//   matmul  y = A B        dA = G B^T           dB = A^T G
//   linear  y = X W^T + b  dX = G W             dW = G^T X            db = column sums of G
// The fast path: matmul is one kernels::gemm (OpenBLAS, threaded) per product; linear, whose M is
// often B*H*W pixel rows (the UNet's 1x1 convolutions and attention projections run through it),
// cuts its rows into L2-sized chunks of single-threaded GEMMs on OpenMP threads, with dW summed
// from per-thread partials (kernels/cpu/row_chunks.h says why and what it measured). The reference
// is the same products on gemm_reference, the plain triple loop.
#include "kernels/matmul.h"

#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/cpu/row_chunks.h"
#include "kernels/gemm.h"

namespace diffuse::kernels {

namespace {

struct MatmulDims {
  int64_t Bt, M, K, N;
};

MatmulDims matmul_dims(const Tensor& a, const Tensor& b) {
  DF_CHECK(a.dtype() == b.dtype() && (a.dtype() == DType::f32 || a.dtype() == DType::f64), "matmul: ", a.str(),
           " x ", b.str(), " (cpu: f32 or f64, the same)");
  DF_CHECK((a.dim() == 2 && b.dim() == 2) || (a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0)),
           "matmul: expected (M,K)x(K,N) or (Bt,M,K)x(Bt,K,N), got ", a.shape().str(), " x ", b.shape().str());
  DF_CHECK(a.size(-1) == b.size(-2), "matmul: inner sizes differ: ", a.shape().str(), " x ", b.shape().str());
  return {a.dim() == 3 ? a.size(0) : 1, a.size(-2), a.size(-1), b.size(-1)};
}

struct LinearDims {
  int64_t M, In, Out;
};

LinearDims linear_dims(const Tensor& x, const Tensor& w, const Tensor& bias) {
  DF_CHECK(x.dtype() == w.dtype() && (x.dtype() == DType::f32 || x.dtype() == DType::f64), "linear: x ", x.str(),
           ", weight ", w.str(), " (cpu: f32 or f64, the same)");
  DF_CHECK(w.dim() == 2 && x.dim() >= 1 && x.size(-1) == w.size(1), "linear: x ", x.shape().str(), " and weight ",
           w.shape().str(), " (Out, In) do not fit");
  DF_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == w.size(0) && bias.dtype() == x.dtype()),
           "linear: bias ", bias.str(), " for ", w.size(0), " outputs");
  const int64_t In = w.size(1);
  return {In ? x.numel() / In : 0, In, w.size(0)};
}

void check_out(const Tensor& t, const Shape& s, DType dt, const char* op, const char* what) {
  DF_CHECK(t.defined() && t.shape() == s && t.dtype() == dt && t.device().is_cpu(), op, ": ", what, " is ", t.str(),
           ", expected ", s.str());
}

Shape matmul_out_shape(const Tensor& a, const MatmulDims& d) {
  return a.dim() == 3 ? Shape{d.Bt, d.M, d.N} : Shape{d.M, d.N};
}

Shape linear_out_shape(const Tensor& x, int64_t Out) {
  Shape s = x.shape();
  s[-1] = Out;
  return s;
}

// The fast path and the reference share the code below and differ only in the GEMM they call.
template <class T>
using Gemm = void (*)(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*, int64_t, T, T*, int64_t);

template <class T>
void fast_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
               int64_t ldb, T beta, T* C, int64_t ldc) {
  gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <class T>
void mm_forward(Gemm<T> gm, const Tensor& a, const Tensor& b, Tensor& y, const MatmulDims& d) {
  for (int64_t i = 0; i < d.Bt; ++i)
    gm(false, false, d.M, d.N, d.K, T(1), a.data<T>() + i * d.M * d.K, d.K, b.data<T>() + i * d.K * d.N, d.N, T(0),
       y.data<T>() + i * d.M * d.N, d.N);
}

template <class T>
void mm_backward(Gemm<T> gm, const Tensor& g, const Tensor& a, const Tensor& b, MatmulGrads& r, const MatmulDims& d) {
  for (int64_t i = 0; i < d.Bt; ++i) {
    const T* gi = g.data<T>() + i * d.M * d.N;
    if (r.da.defined())
      gm(false, true, d.M, d.K, d.N, T(1), gi, d.N, b.data<T>() + i * d.K * d.N, d.N, T(0),
         r.da.data<T>() + i * d.M * d.K, d.K);
    if (r.db.defined())
      gm(true, false, d.K, d.N, d.M, T(1), a.data<T>() + i * d.M * d.K, d.K, gi, d.N, T(0),
         r.db.data<T>() + i * d.K * d.N, d.N);
  }
}

// Reference: whole products on gemm_reference.
template <class T>
void lin_forward_ref(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, const LinearDims& d) {
  T* yp = y.data<T>();
  if (bias.defined())
    for (int64_t m = 0; m < d.M; ++m) std::memcpy(yp + m * d.Out, bias.data<T>(), sizeof(T) * d.Out);
  gemm_reference<T>(false, true, d.M, d.Out, d.In, T(1), x.data<T>(), d.In, w.data<T>(), d.In,
                    bias.defined() ? T(1) : T(0), yp, d.Out);
}

template <class T>
void lin_backward_ref(const Tensor& g, const Tensor& x, const Tensor& w, LinearGrads& r, const LinearDims& d) {
  const T* gp = g.data<T>();
  if (r.dx.defined())
    gemm_reference<T>(false, false, d.M, d.In, d.Out, T(1), gp, d.Out, w.data<T>(), d.In, T(0), r.dx.data<T>(), d.In);
  if (r.dw.defined())
    gemm_reference<T>(true, false, d.Out, d.In, d.M, T(1), gp, d.Out, x.data<T>(), d.In, T(0), r.dw.data<T>(), d.In);
  if (r.db.defined())
    for (int64_t o = 0; o < d.Out; ++o) {
      double acc = 0;
      for (int64_t m = 0; m < d.M; ++m) acc += gp[m * d.Out + o];
      r.db.data<T>()[o] = static_cast<T>(acc);
    }
}

// Fast path: row chunks of x / y / dx / g, each a single-threaded GEMM.
template <class T>
void lin_forward_fast(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y, const LinearDims& d) {
  const T *xp = x.data<T>(), *wp = w.data<T>(), *bp = bias.defined() ? bias.data<T>() : nullptr;
  T* yp = y.data<T>();
  rows::for_each_chunk(d.M, rows::chunk_rows(d.In, sizeof(T)), [&](int, int64_t m0, int64_t m1) {
    if (bp)  // C starts at the bias and the GEMM adds onto it: one pass over y
      for (int64_t m = m0; m < m1; ++m) std::memcpy(yp + m * d.Out, bp, sizeof(T) * d.Out);
    rows::chunk_gemm(false, true, m1 - m0, d.Out, d.In, T(1), xp + m0 * d.In, d.In, wp, d.In, bp ? T(1) : T(0),
                     yp + m0 * d.Out, d.Out);
  });
}

template <class T>
void lin_backward_fast(const Tensor& g, const Tensor& x, const Tensor& w, LinearGrads& r, const LinearDims& d) {
  const T* gp = g.data<T>();
  if (r.dx.defined()) {
    T* dx = r.dx.data<T>();
    const T* wp = w.data<T>();
    rows::for_each_chunk(d.M, rows::chunk_rows(d.In, sizeof(T)), [&](int, int64_t m0, int64_t m1) {
      rows::chunk_gemm(false, false, m1 - m0, d.In, d.Out, T(1), gp + m0 * d.Out, d.Out, wp, d.In, T(0),
                       dx + m0 * d.In, d.In);
    });
  }
  if (r.dw.defined()) {
    const T* xp = x.data<T>();
    rows::gemm_tn_over_rows(
        d.M, d.Out, d.In, gp, [&](int64_t m0, int64_t) { return xp + m0 * d.In; }, r.dw.data<T>(),
        rows::chunk_rows(d.In, sizeof(T)));
  }
  if (r.db.defined()) rows::column_sums(gp, d.M, d.Out, r.db.data<T>());
}

void check_matmul_grads(const Tensor& g, const Tensor& a, const Tensor& b, const MatmulGrads& r, const MatmulDims& d) {
  check_out(g, matmul_out_shape(a, d), a.dtype(), "matmul backward", "gradient");
  if (r.da.defined()) check_out(r.da, a.shape(), a.dtype(), "matmul backward", "da");
  if (r.db.defined()) check_out(r.db, b.shape(), a.dtype(), "matmul backward", "db");
}

void check_linear_grads(const Tensor& g, const Tensor& x, const Tensor& w, const LinearGrads& r, const LinearDims& d) {
  check_out(g, linear_out_shape(x, d.Out), x.dtype(), "linear backward", "gradient");
  if (r.dx.defined()) check_out(r.dx, x.shape(), x.dtype(), "linear backward", "dx");
  if (r.dw.defined()) check_out(r.dw, w.shape(), x.dtype(), "linear backward", "dw");
  if (r.db.defined()) check_out(r.db, Shape{d.Out}, x.dtype(), "linear backward", "db");
}

// Both namespaces below run the same bodies; `Ref` picks gemm_reference over the fast gemm.
template <bool Ref, class F>
void with_gemm(DType dt, F&& f) {
  if (dt == DType::f64)
    f(Ref ? &gemm_reference<double> : &fast_gemm<double>, double{});
  else
    f(Ref ? &gemm_reference<float> : &fast_gemm<float>, float{});
}

template <bool Ref>
void do_matmul_forward(const Tensor& a, const Tensor& b, Tensor& y) {
  const MatmulDims d = matmul_dims(a, b);
  check_out(y, matmul_out_shape(a, d), a.dtype(), "matmul", "y");
  with_gemm<Ref>(a.dtype(), [&](auto gm, auto tag) { mm_forward<decltype(tag)>(gm, a, b, y, d); });
}

template <bool Ref>
void do_matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b, MatmulGrads& r) {
  const MatmulDims d = matmul_dims(a, b);
  check_matmul_grads(g, a, b, r, d);
  with_gemm<Ref>(a.dtype(), [&](auto gm, auto tag) { mm_backward<decltype(tag)>(gm, g, a, b, r, d); });
}

template <bool Ref>
void do_linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y) {
  const LinearDims d = linear_dims(x, w, bias);
  check_out(y, linear_out_shape(x, d.Out), x.dtype(), "linear", "y");
  with_gemm<Ref>(x.dtype(), [&](auto, auto tag) {
    using T = decltype(tag);
    (Ref ? lin_forward_ref<T> : lin_forward_fast<T>)(x, w, bias, y, d);
  });
}

template <bool Ref>
void do_linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, LinearGrads& r) {
  const LinearDims d = linear_dims(x, w, Tensor());
  check_linear_grads(g, x, w, r, d);
  with_gemm<Ref>(x.dtype(), [&](auto, auto tag) {
    using T = decltype(tag);
    (Ref ? lin_backward_ref<T> : lin_backward_fast<T>)(g, x, w, r, d);
  });
}

}  // namespace

namespace cpu {
void matmul_forward(const Tensor& a, const Tensor& b, Tensor& y) { do_matmul_forward<false>(a, b, y); }
void matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b, MatmulGrads& r) {
  do_matmul_backward<false>(g, a, b, r);
}
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y) {
  do_linear_forward<false>(x, w, bias, y);
}
void linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, LinearGrads& r) {
  do_linear_backward<false>(g, x, w, r);
}
}  // namespace cpu

namespace ref {
void matmul_forward(const Tensor& a, const Tensor& b, Tensor& y) { do_matmul_forward<true>(a, b, y); }
void matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b, MatmulGrads& r) {
  do_matmul_backward<true>(g, a, b, r);
}
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y) {
  do_linear_forward<true>(x, w, bias, y);
}
void linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, LinearGrads& r) {
  do_linear_backward<true>(g, x, w, r);
}
}  // namespace ref

namespace cpu {

Tensor matmul_forward(const Tensor& a, const Tensor& b) {
  const MatmulDims d = matmul_dims(a, b);
  Tensor y = Tensor::empty(matmul_out_shape(a, d), a.dtype());
  cpu::matmul_forward(a, b, y);
  return y;
}

MatmulGrads matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b, bool need_a, bool need_b) {
  MatmulGrads r;
  if (need_a) r.da = Tensor::empty(a.shape(), a.dtype());
  if (need_b) r.db = Tensor::empty(b.shape(), b.dtype());
  cpu::matmul_backward(g, a, b, r);
  return r;
}

Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias) {
  const LinearDims d = linear_dims(x, w, bias);
  Tensor y = Tensor::empty(linear_out_shape(x, d.Out), x.dtype());
  cpu::linear_forward(x, w, bias, y);
  return y;
}

LinearGrads linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, bool need_x, bool need_w, bool need_b) {
  LinearGrads r;
  if (need_x) r.dx = Tensor::empty(x.shape(), x.dtype());
  if (need_w) r.dw = Tensor::empty(w.shape(), w.dtype());
  if (need_b) r.db = Tensor::empty({w.size(0)}, w.dtype());
  cpu::linear_backward(g, x, w, r);
  return r;
}

}  // namespace cpu

}  // namespace diffuse::kernels

namespace diffuse::kernels {

Tensor matmul_forward(const Tensor& a, const Tensor& b) {
  DF_PROFILE("matmul_forward");
  DF_ON_CUDA(a.device(), cuda::matmul_forward(a, b));
  if (!a.device().is_cpu()) unsupported_device("matmul", a.device());
  return cpu::matmul_forward(a, b);
}

MatmulGrads matmul_backward(const Tensor& g, const Tensor& a, const Tensor& b, bool need_a, bool need_b) {
  DF_PROFILE("matmul_backward");
  DF_ON_CUDA(a.device(), cuda::matmul_backward(g, a, b, need_a, need_b));
  if (!a.device().is_cpu()) unsupported_device("matmul", a.device());
  return cpu::matmul_backward(g, a, b, need_a, need_b);
}

Tensor linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias) {
  DF_PROFILE("linear_forward");
  DF_ON_CUDA(x.device(), cuda::linear_forward(x, w, bias));
  if (!x.device().is_cpu()) unsupported_device("linear", x.device());
  return cpu::linear_forward(x, w, bias);
}

LinearGrads linear_backward(const Tensor& g, const Tensor& x, const Tensor& w, bool need_x, bool need_w, bool need_b) {
  DF_PROFILE("linear_backward");
  DF_ON_CUDA(x.device(), cuda::linear_backward(g, x, w, need_x, need_w, need_b));
  if (!x.device().is_cpu()) unsupported_device("linear", x.device());
  return cpu::linear_backward(g, x, w, need_x, need_w, need_b);
}

}  // namespace diffuse::kernels
