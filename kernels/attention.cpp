// kernels/attention.cpp: multi-head scaled dot-product attention: the cpu reference and fast path
// (saved = P), and the Tensor-level op, which runs on q's device: the cpu here or the GPU's flash
// kernels (kernels/cuda/attention.cu: saved = the row log-sum-exp, for head dims 32 and 64).
//
// Shape glossary: B batch, Tq query tokens, Tk key/value tokens, C channels, h heads (`heads`),
// D = C / h head dim. q[b, t, h*D + d] at (b*Tq + t)*C + h*D + d; P[b, h, i, j] at
// ((b*heads + h)*Tq + i)*Tk + j.
// Forward (Vaswani et al. 2017, eq. 1): S = Q K^T / sqrt(D), P = softmax_rows(S), O = P V.
// Backward, with dO the gradient of O and the softmax Jacobian diag(p) - p p^T per row:
//   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dP * P)),
//   dQ = dS K / sqrt(D),  dK = dS^T Q / sqrt(D).
//
// The reference is plain loops with double accumulation. The fast path does each (b, h) as
// GEMMs on strided views: head h of Q is the (Tq, D) matrix at q + h*D with leading dimension C,
// so no head is copied or transposed; heads write disjoint channel slices of the outputs.
#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/gemm.h"
#include "kernels/softmax.h"

#if defined(DIFFUSE_HAVE_OPENBLAS)
#include <cblas.h>
#endif

namespace diffuse::kernels {

namespace {

struct Dims {
  int64_t B, Tq, Tk, C, H, D;
};

Dims check_args(const Tensor& q, const Tensor& k, const Tensor& v, int heads) {
  DF_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "attention: q, k, v must be (B, T, C), got ", q.str(), ", ",
           k.str(), ", ", v.str());
  DF_CHECK(q.dtype() == DType::f32 || q.dtype() == DType::f64, "attention: f32 or f64, got ", q.str());
  check_same_shape(k, v, "attention k/v");
  check_dtype(k, q.dtype(), "attention k");
  check_dtype(v, q.dtype(), "attention v");
  check_device(k, q.device(), "attention k");
  check_device(v, q.device(), "attention v");
  Dims d{q.size(0), q.size(1), k.size(1), q.size(2), heads, 0};
  DF_CHECK(k.size(0) == d.B && k.size(2) == d.C, "attention: k/v ", k.str(), " do not match q ", q.str());
  DF_CHECK(heads > 0 && d.C % heads == 0, "attention: C=", d.C, " not divisible by heads=", heads);
  DF_CHECK(d.Tq > 0 && d.Tk > 0 && d.B > 0, "attention: empty input ", q.str(), ", ", k.str());
  d.D = d.C / heads;
  return d;
}

void check_p(const Tensor& p, const Dims& d, DType t) {
  DF_CHECK(p.numel() == d.B * d.H * d.Tq * d.Tk, "attention: P must be (", d.B, ", ", d.H, ", ", d.Tq, ", ", d.Tk,
           "), got ", p.str());
  check_dtype(p, t, "attention P");
}

template <class T>
void ref_forward(const T* q, const T* k, const T* v, const Dims& d, T* out, T* p) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(d.D));
  std::vector<double> s(d.Tk);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.H; ++h)
      for (int64_t i = 0; i < d.Tq; ++i) {
        const T* qi = q + (b * d.Tq + i) * d.C + h * d.D;
        double mx = -INFINITY;
        for (int64_t j = 0; j < d.Tk; ++j) {
          const T* kj = k + (b * d.Tk + j) * d.C + h * d.D;
          double acc = 0;
          for (int64_t e = 0; e < d.D; ++e) acc += static_cast<double>(qi[e]) * kj[e];
          s[j] = acc * scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < d.Tk; ++j) sum += (s[j] = std::exp(s[j] - mx));
        T* pi = p + ((b * d.H + h) * d.Tq + i) * d.Tk;
        for (int64_t j = 0; j < d.Tk; ++j) pi[j] = static_cast<T>(s[j] / sum);
        for (int64_t e = 0; e < d.D; ++e) {
          double acc = 0;
          for (int64_t j = 0; j < d.Tk; ++j) acc += s[j] / sum * v[(b * d.Tk + j) * d.C + h * d.D + e];
          out[(b * d.Tq + i) * d.C + h * d.D + e] = static_cast<T>(acc);
        }
      }
}

template <class T>
void ref_backward(const T* dout, const T* q, const T* k, const T* v, const T* p, const Dims& d, T* dq, T* dk,
                  T* dv) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(d.D));
  std::vector<double> ds(d.Tq * d.Tk);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.H; ++h) {
      const T* P = p + (b * d.H + h) * d.Tq * d.Tk;
      auto at = [&](const T* base, int64_t T_, int64_t t, int64_t e) { return base[(b * T_ + t) * d.C + h * d.D + e]; };
      // dS = P * (dP - rowsum(dP * P)), dP = dO V^T
      for (int64_t i = 0; i < d.Tq; ++i) {
        double dot = 0;
        for (int64_t j = 0; j < d.Tk; ++j) {
          double dp = 0;
          for (int64_t e = 0; e < d.D; ++e) dp += static_cast<double>(at(dout, d.Tq, i, e)) * at(v, d.Tk, j, e);
          ds[i * d.Tk + j] = dp;
          dot += dp * P[i * d.Tk + j];
        }
        for (int64_t j = 0; j < d.Tk; ++j) ds[i * d.Tk + j] = P[i * d.Tk + j] * (ds[i * d.Tk + j] - dot);
      }
      for (int64_t e = 0; e < d.D; ++e) {
        for (int64_t i = 0; i < d.Tq; ++i) {  // dQ = dS K * scale
          double acc = 0;
          for (int64_t j = 0; j < d.Tk; ++j) acc += ds[i * d.Tk + j] * at(k, d.Tk, j, e);
          dq[(b * d.Tq + i) * d.C + h * d.D + e] = static_cast<T>(acc * scale);
        }
        for (int64_t j = 0; j < d.Tk; ++j) {  // dK = dS^T Q * scale, dV = P^T dO
          double acck = 0, accv = 0;
          for (int64_t i = 0; i < d.Tq; ++i) {
            acck += ds[i * d.Tk + j] * at(q, d.Tq, i, e);
            accv += static_cast<double>(P[i * d.Tk + j]) * at(dout, d.Tq, i, e);
          }
          dk[(b * d.Tk + j) * d.C + h * d.D + e] = static_cast<T>(acck * scale);
          dv[(b * d.Tk + j) * d.C + h * d.D + e] = static_cast<T>(accv);
        }
      }
    }
}

// Runs body(bh) for every (b, h). The per-head GEMMs are small (Tq x Tk x D <= 196 x 196 x 128),
// so splitting the (b, h) loop across OpenMP threads with single-threaded GEMMs beat a serial
// loop of threaded GEMMs on 2 cores (bench/norm_attention_bench, best-of-30: B=64, T=49, C=64,
// 1 head: forward 1.3 vs 2.5 ms, backward 1.8 vs 3.5 ms; at T=196 the two were within noise).
// OpenBLAS (pthreads build) would start its own threads inside each call, so it is held at one
// thread for the duration of the loop and restored after; openblas_set_num_threads is global,
// which is fine while one thread drives the model, as the trainer and sampler do.
template <class F>
void for_each_head(int64_t BH, F&& body) {
#if defined(DIFFUSE_HAVE_OPENBLAS)
  const int blas_threads = openblas_get_num_threads();
  if (blas_threads > 1) openblas_set_num_threads(1);
#endif
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t bh = 0; bh < BH; ++bh) body(bh);
#if defined(DIFFUSE_HAVE_OPENBLAS)
  if (blas_threads > 1) openblas_set_num_threads(blas_threads);
#endif
}

template <class T>
void fast_forward(const T* q, const T* k, const T* v, const Dims& d, T* out, T* p) {
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(d.D)));
  for_each_head(d.B * d.H, [&](int64_t bh) {
    const int64_t b = bh / d.H, h = bh % d.H;
    const T *Q = q + b * d.Tq * d.C + h * d.D, *K = k + b * d.Tk * d.C + h * d.D, *V = v + b * d.Tk * d.C + h * d.D;
    T* P = p + bh * d.Tq * d.Tk;
    gemm(false, true, d.Tq, d.Tk, d.D, scale, Q, d.C, K, d.C, T(0), P, d.Tk);  // S = Q K^T / sqrt(D)
    for (int64_t i = 0; i < d.Tq; ++i) cpu::softmax_row(P + i * d.Tk, P + i * d.Tk, d.Tk);
    gemm(false, false, d.Tq, d.D, d.Tk, T(1), P, d.Tk, V, d.C, T(0), out + b * d.Tq * d.C + h * d.D, d.C);
  });
}

template <class T>
void fast_backward(const T* dout, const T* q, const T* k, const T* v, const T* p, const Dims& d, T* dq, T* dk,
                   T* dv) {
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(d.D)));
  for_each_head(d.B * d.H, [&](int64_t bh) {
    const int64_t b = bh / d.H, h = bh % d.H, oq = b * d.Tq * d.C + h * d.D, ok = b * d.Tk * d.C + h * d.D;
    const T* P = p + bh * d.Tq * d.Tk;
    thread_local std::vector<T> ds;
    ds.resize(static_cast<size_t>(d.Tq * d.Tk));
    gemm(true, false, d.Tk, d.D, d.Tq, T(1), P, d.Tk, dout + oq, d.C, T(0), dv + ok, d.C);        // dV = P^T dO
    gemm(false, true, d.Tq, d.Tk, d.D, T(1), dout + oq, d.C, v + ok, d.C, T(0), ds.data(), d.Tk);  // dP = dO V^T
    for (int64_t i = 0; i < d.Tq; ++i)
      cpu::softmax_backward_row(ds.data() + i * d.Tk, P + i * d.Tk, ds.data() + i * d.Tk, d.Tk);  // dS
    gemm(false, false, d.Tq, d.D, d.Tk, scale, ds.data(), d.Tk, k + ok, d.C, T(0), dq + oq, d.C);  // dQ = dS K
    gemm(true, false, d.Tk, d.D, d.Tq, scale, ds.data(), d.Tk, q + oq, d.C, T(0), dk + ok, d.C);   // dK = dS^T Q
  });
}

template <class T>
void run_forward(const Tensor& q, const Tensor& k, const Tensor& v, int heads, Tensor& out, Tensor& p, bool fast) {
  Dims d = check_args(q, k, v, heads);
  check_same_shape(out, q, "attention out");
  check_dtype(out, q.dtype(), "attention out");
  check_p(p, d, q.dtype());
  if (fast) fast_forward(q.data<T>(), k.data<T>(), v.data<T>(), d, out.data<T>(), p.data<T>());
  else ref_forward(q.data<T>(), k.data<T>(), v.data<T>(), d, out.data<T>(), p.data<T>());
}

template <class T>
void run_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& p, int heads,
                  Tensor& dq, Tensor& dk, Tensor& dv, bool fast) {
  Dims d = check_args(q, k, v, heads);
  check_p(p, d, q.dtype());
  check_same_shape(dout, q, "attention dout");
  check_same_shape(dq, q, "attention dq");
  check_same_shape(dk, k, "attention dk");
  check_same_shape(dv, v, "attention dv");
  for (const Tensor* t : std::initializer_list<const Tensor*>{&dout, &dq, &dk, &dv})
    check_dtype(*t, q.dtype(), "attention gradient");
  if (fast)
    fast_backward(dout.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(), p.data<T>(), d, dq.data<T>(), dk.data<T>(),
                  dv.data<T>());
  else
    ref_backward(dout.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(), p.data<T>(), d, dq.data<T>(), dk.data<T>(),
                 dv.data<T>());
}

}  // namespace

namespace cpu {
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int heads, Tensor& out, Tensor& p) {
  if (q.dtype() == DType::f32) run_forward<float>(q, k, v, heads, out, p, true);
  else run_forward<double>(q, k, v, heads, out, p, true);
}
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& p,
                        int heads, Tensor& dq, Tensor& dk, Tensor& dv) {
  if (q.dtype() == DType::f32) run_backward<float>(dout, q, k, v, p, heads, dq, dk, dv, true);
  else run_backward<double>(dout, q, k, v, p, heads, dq, dk, dv, true);
}
}  // namespace cpu

namespace ref {
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int heads, Tensor& out, Tensor& p) {
  if (q.dtype() == DType::f32) run_forward<float>(q, k, v, heads, out, p, false);
  else run_forward<double>(q, k, v, heads, out, p, false);
}
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& p,
                        int heads, Tensor& dq, Tensor& dk, Tensor& dv) {
  if (q.dtype() == DType::f32) run_backward<float>(dout, q, k, v, p, heads, dq, dk, dv, false);
  else run_backward<double>(dout, q, k, v, p, heads, dq, dk, dv, false);
}
}  // namespace ref

}  // namespace diffuse::kernels

namespace diffuse::kernels {

AttentionResult attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, int heads) {
  DF_PROFILE("attention_forward");
  if (q.device().is_cpu()) {
    DF_CHECK(q.dim() == 3 && k.dim() == 3, "attention: q, k must be (B, T, C), got ", q.str(), ", ", k.str());
    AttentionResult r;
    r.out = Tensor::empty(q.shape(), q.dtype());
    r.saved = Tensor::empty({q.size(0), heads, q.size(1), k.size(1)}, q.dtype());
    cpu::attention_forward(q, k, v, heads, r.out, r.saved);
    return r;
  }
  DF_ON_CUDA(q.device(), cuda::attention_forward(q, k, v, heads));
  unsupported_device("attention", q.device());
}

AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionResult& fwd, int heads) {
  DF_PROFILE("attention_backward");
  if (q.device().is_cpu()) {
    AttentionGrads g{Tensor::empty(q.shape(), q.dtype()), Tensor::empty(k.shape(), k.dtype()),
                     Tensor::empty(v.shape(), v.dtype())};
    cpu::attention_backward(dout, q, k, v, fwd.saved, heads, g.dq, g.dk, g.dv);
    return g;
  }
  DF_ON_CUDA(q.device(), cuda::attention_backward(dout, q, k, v, fwd, heads));
  unsupported_device("attention", q.device());
}

}  // namespace diffuse::kernels
