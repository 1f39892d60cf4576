// kernels/group_norm.cpp: GroupNorm with AdaGN scale/shift and fused SiLU (kernels/group_norm.h):
// the cpu reference and fast path, and the Tensor-level op, which allocates the outputs and runs on
// x's device: the cpu here or the GPU (kernels/cuda/group_norm.cu: f32 statistics, any float dtype
// of scale and shift).
//
// Shape glossary: B batch, N positions per sample (H*W, T, or 1), C channels (innermost),
// G groups, Cg = C / G channels per group. x[b, n, c] at (b*N + n)*C + c.
// Math (Wu & He 2018, eq. 1-2; AdaGN: Dhariwal & Nichol 2021, sec. 3):
//   xhat = (x - mu_bg) * rstd_bg,  z = (xhat*gamma_c + beta_c) * (1 + s_bc) + t_bc,  y = act(z).
// Backward: u = dy * act'(z) is the gradient of z; dxhat = u * (1 + s) * gamma, and the
// standard normalisation backward (e.g. Ioffe & Szegedy 2015, sec. 3, per group here)
//   dx = rstd * (dxhat - mean_g(dxhat) - xhat * mean_g(dxhat * xhat)).
//
// The reference follows these formulas element by element per (b, g). The fast path works on
// whole channel rows (contiguous in NHWC, so the inner loops over c vectorise even when a group
// has only a few channels) and folds every per-(b, c) factor into one multiply-add:
//   forward   z  = (x - mu_bg) * a_bc + e_bc
//   backward  dx = u * k_bc + (x - mu_bg) * p_bg + q_bg
// (x - mu is subtracted first, as in the reference, so nothing cancels when |mu| >> std),
// with the per-(b, c) sums U = sum_n u and V = sum_n u * xhat giving every parameter gradient:
//   dshift = U, dscale = gamma V + beta U, dgamma = sum_b (1+s) V, dbeta = sum_b (1+s) U.
#include "kernels/group_norm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "core/profile.h"
#include "kernels/backend.h"
#include "kernels/cpu/row_chunks.h"
#include "kernels/cpu/vec_math.h"

namespace diffuse::kernels {

namespace {

struct Dims {
  int64_t B, N, C, G, Cg;
};

Dims check_args(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& scale, const Tensor& shift,
                const GroupNormOptions& opt) {
  DF_CHECK(x.dim() >= 2 && x.numel() > 0, "group_norm: x must be a non-empty (B, ..., C), got ", x.str());
  DF_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::f64, "group_norm: f32 or f64, got ", x.str());
  Dims d;
  d.B = x.size(0);
  d.C = x.size(-1);
  d.G = opt.groups;
  DF_CHECK(d.G > 0 && d.C % d.G == 0, "group_norm: C=", d.C, " not divisible by groups=", d.G);
  d.Cg = d.C / d.G;
  d.N = d.B * d.C == 0 ? 0 : x.numel() / (d.B * d.C);
  DF_CHECK(opt.eps >= 0, "group_norm: eps must be >= 0, got ", opt.eps);
  for (const Tensor* p : {&gamma, &beta}) {
    if (!p->defined()) continue;
    DF_CHECK(p->numel() == d.C && p->dim() == 1, "group_norm: gamma/beta must be (", d.C, "), got ", p->str());
    check_dtype(*p, x.dtype(), "group_norm gamma/beta");
    check_device(*p, x.device(), "group_norm gamma/beta");
  }
  for (const Tensor* p : {&scale, &shift}) {
    if (!p->defined()) continue;
    DF_CHECK(p->dim() == 2 && p->size(0) == d.B && p->size(1) == d.C, "group_norm: scale/shift must be (", d.B, ", ",
             d.C, "), got ", p->str());
    check_dtype(*p, x.dtype(), "group_norm scale/shift");
    check_device(*p, x.device(), "group_norm scale/shift");
  }
  return d;
}

template <class T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}
template <class T>
T* ptr_or_null(Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

template <class T>
T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}


// ---------------------------------------------------------------------------------------------
// Reference: one (b, g) at a time, formulas as written above, double accumulation.

template <class T>
void ref_forward(const Tensor& xt, const Tensor& gt, const Tensor& bt, const Tensor& st, const Tensor& tt,
                 const GroupNormOptions& opt, const Dims& d, T* y, T* mean, T* rstd) {
  const T *x = xt.data<T>(), *gamma = ptr_or_null<T>(gt), *beta = ptr_or_null<T>(bt);
  const T *scale = ptr_or_null<T>(st), *shift = ptr_or_null<T>(tt);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t g = 0; g < d.G; ++g) {
      double sum = 0;
      for (int64_t n = 0; n < d.N; ++n)
        for (int64_t c = g * d.Cg; c < (g + 1) * d.Cg; ++c) sum += x[(b * d.N + n) * d.C + c];
      const double cnt = static_cast<double>(d.N * d.Cg), mu = sum / cnt;
      double ss = 0;  // two passes: the centred sum of squares has no cancellation
      for (int64_t n = 0; n < d.N; ++n)
        for (int64_t c = g * d.Cg; c < (g + 1) * d.Cg; ++c) {
          double e = x[(b * d.N + n) * d.C + c] - mu;
          ss += e * e;
        }
      const double rs = 1.0 / std::sqrt(ss / cnt + opt.eps);
      mean[b * d.G + g] = static_cast<T>(mu);
      rstd[b * d.G + g] = static_cast<T>(rs);
      for (int64_t n = 0; n < d.N; ++n)
        for (int64_t c = g * d.Cg; c < (g + 1) * d.Cg; ++c) {
          int64_t i = (b * d.N + n) * d.C + c;
          double xhat = (x[i] - mu) * rs;
          double z = xhat * (gamma ? gamma[c] : 1.0) + (beta ? beta[c] : 0.0);
          if (scale) z *= 1.0 + scale[b * d.C + c];
          if (shift) z += shift[b * d.C + c];
          if (opt.silu) z = z * sigmoid(z);
          y[i] = static_cast<T>(z);
        }
    }
}

template <class T>
void ref_backward(const Tensor& dyt, const Tensor& xt, const Tensor& mt, const Tensor& rt, const Tensor& gt,
                  const Tensor& bt, const Tensor& st, const Tensor& tt, const GroupNormOptions& opt, const Dims& d,
                  GroupNormGrads& out) {
  const T *dy = dyt.data<T>(), *x = xt.data<T>(), *mean = mt.data<T>(), *rstd = rt.data<T>();
  const T *gamma = ptr_or_null<T>(gt), *beta = ptr_or_null<T>(bt);
  const T *scale = ptr_or_null<T>(st), *shift = ptr_or_null<T>(tt);
  std::vector<double> dgamma(d.C, 0.0), dbeta(d.C, 0.0), dscale(d.B * d.C, 0.0), dshift(d.B * d.C, 0.0);
  std::vector<double> dxhat(d.N * d.Cg), xhat(d.N * d.Cg);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t g = 0; g < d.G; ++g) {
      const double mu = mean[b * d.G + g], rs = rstd[b * d.G + g];
      double m1 = 0, m2 = 0;  // sums of dxhat and dxhat * xhat over the group
      for (int64_t n = 0; n < d.N; ++n)
        for (int64_t j = 0; j < d.Cg; ++j) {
          const int64_t c = g * d.Cg + j, i = (b * d.N + n) * d.C + c, l = n * d.Cg + j;
          const double ga = gamma ? gamma[c] : 1.0, be = beta ? beta[c] : 0.0;
          const double s1 = scale ? 1.0 + scale[b * d.C + c] : 1.0;
          const double xh = (x[i] - mu) * rs;
          const double h = xh * ga + be;  // the affine output before scale/shift
          double u = dy[i];
          if (opt.silu) {
            // d/dz z sigmoid(z) = sigmoid(z) (1 + z (1 - sigmoid(z)))
            double z = h * s1 + (shift ? shift[b * d.C + c] : 0.0);
            double sg = sigmoid(z);
            u *= sg * (1.0 + z * (1.0 - sg));
          }
          dshift[b * d.C + c] += u;
          dscale[b * d.C + c] += u * h;
          dgamma[c] += u * s1 * xh;
          dbeta[c] += u * s1;
          xhat[l] = xh;
          dxhat[l] = u * s1 * ga;
          m1 += dxhat[l];
          m2 += dxhat[l] * xh;
        }
      const double cnt = static_cast<double>(d.N * d.Cg);
      m1 /= cnt;
      m2 /= cnt;
      if (out.dx.defined())
        for (int64_t n = 0; n < d.N; ++n)
          for (int64_t j = 0; j < d.Cg; ++j) {
            const int64_t l = n * d.Cg + j;
            out.dx.data<T>()[(b * d.N + n) * d.C + g * d.Cg + j] = static_cast<T>(rs * (dxhat[l] - m1 - xhat[l] * m2));
          }
    }
  auto store = [](Tensor& t, const std::vector<double>& v) {
    if (!t.defined()) return;
    for (size_t i = 0; i < v.size(); ++i) t.data<T>()[i] = static_cast<T>(v[i]);
  };
  store(out.dgamma, dgamma);
  store(out.dbeta, dbeta);
  store(out.dscale, dscale);
  store(out.dshift, dshift);
}

// ---------------------------------------------------------------------------------------------
// Fast path.

// Per-sample statistics from per-channel partial sums. Each channel's values are shifted by the
// channel's first value before summing in double ("shifted data" variance, Chan, Golub & LeVeque
// 1983), and channels are merged into their group with Chan et al.'s pairwise formula: the
// variance stays accurate even when |mean| >> std, at one pass over the data.
template <class T>
DF_SIMD_CLONES void sample_stats(const T* xb, const Dims& d, double eps, T* mean, T* rstd) {
  std::vector<double> s1(d.C, 0.0), s2(d.C, 0.0), k(d.C);
  for (int64_t c = 0; c < d.C; ++c) k[c] = xb[c];
  for (int64_t n = 0; n < d.N; ++n) {
    const T* row = xb + n * d.C;
    double *p1 = s1.data(), *p2 = s2.data();
    const double* pk = k.data();
#pragma omp simd
    for (int64_t c = 0; c < d.C; ++c) {
      double e = row[c] - pk[c];
      p1[c] += e;
      p2[c] += e * e;
    }
  }
  const double nn = static_cast<double>(d.N), cnt = nn * static_cast<double>(d.Cg);
  for (int64_t g = 0; g < d.G; ++g) {
    double mu = 0;
    for (int64_t c = g * d.Cg; c < (g + 1) * d.Cg; ++c) mu += k[c] + s1[c] / nn;
    mu /= static_cast<double>(d.Cg);
    double m2 = 0;
    for (int64_t c = g * d.Cg; c < (g + 1) * d.Cg; ++c) {
      const double mc = k[c] + s1[c] / nn;
      m2 += (s2[c] - s1[c] * s1[c] / nn) + nn * (mc - mu) * (mc - mu);
    }
    mean[g] = static_cast<T>(mu);
    rstd[g] = static_cast<T>(1.0 / std::sqrt(std::max(m2, 0.0) / cnt + eps));
  }
}

// z = (x - mu) * a + e per (b, c) of sample b: a = rstd gamma (1+s), e = beta (1+s) + t; m = mu.
template <class T>
void fold_forward(const T* gamma, const T* beta, const T* scale, const T* shift, const T* mean, const T* rstd,
                  const Dims& d, int64_t b, T* a, T* e, T* m) {
  for (int64_t c = 0; c < d.C; ++c) {
    const int64_t g = c / d.Cg;
    const T ga = gamma ? gamma[c] : T(1), be = beta ? beta[c] : T(0);
    const T s1 = scale ? T(1) + scale[b * d.C + c] : T(1), t = shift ? shift[b * d.C + c] : T(0);
    a[c] = rstd[b * d.G + g] * ga * s1;
    e[c] = be * s1 + t;
    m[c] = mean[b * d.G + g];
  }
}

template <class T>
DF_SIMD_CLONES void normalize_row(const T* xr, T* yr, const T* pa, const T* pe, const T* pm, int64_t C, bool silu) {
  if (silu) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      T z = (xr[c] - pm[c]) * pa[c] + pe[c];
      yr[c] = z / (T(1) + cpu::exp_vec(-z));
    }
  } else {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - pm[c]) * pa[c] + pe[c];
  }
}

// With at least as many samples as threads, each thread takes whole samples and normalises one
// right after its statistics, while it is still in L2 (a 28x28x64 f32 sample is 200 KB): one
// pass over memory instead of two. Fewer samples than threads (batch 1) split the normalising
// pass by rows instead. Both give the same bits: every element goes through the same arithmetic.
template <class T>
void fast_forward(const Tensor& xt, const Tensor& gt, const Tensor& bt, const Tensor& st, const Tensor& tt,
                  const GroupNormOptions& opt, const Dims& d, T* y, T* mean, T* rstd) {
  const T *x = xt.data<T>(), *gamma = ptr_or_null<T>(gt), *beta = ptr_or_null<T>(bt);
  const T *scale = ptr_or_null<T>(st), *shift = ptr_or_null<T>(tt);
  const bool parallel = d.B * d.N * d.C > 16384;
  if (d.B >= rows::max_threads()) {
#pragma omp parallel if (parallel)
    {
      std::vector<T> a(d.C), e(d.C), m(d.C);
#pragma omp for schedule(static)
      for (int64_t b = 0; b < d.B; ++b) {
        sample_stats(x + b * d.N * d.C, d, opt.eps, mean + b * d.G, rstd + b * d.G);
        fold_forward(gamma, beta, scale, shift, mean, rstd, d, b, a.data(), e.data(), m.data());
        for (int64_t n = 0; n < d.N; ++n) {
          const int64_t off = (b * d.N + n) * d.C;
          normalize_row(x + off, y + off, a.data(), e.data(), m.data(), d.C, opt.silu);
        }
      }
    }
    return;
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t b = 0; b < d.B; ++b) sample_stats(x + b * d.N * d.C, d, opt.eps, mean + b * d.G, rstd + b * d.G);
  std::vector<T> a(d.B * d.C), e(d.B * d.C), m(d.B * d.C);
  for (int64_t b = 0; b < d.B; ++b)
    fold_forward(gamma, beta, scale, shift, mean, rstd, d, b, a.data() + b * d.C, e.data() + b * d.C,
                 m.data() + b * d.C);
  const int64_t rows = d.B * d.N;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / std::max<int64_t>(d.N, 1);
    normalize_row(x + r * d.C, y + r * d.C, a.data() + b * d.C, e.data() + b * d.C, m.data() + b * d.C, d.C,
                  opt.silu);
  }
}

// dx of sample b from its U and V (see the top of the file):
//   dx = rstd (dxhat - m1 - xhat m2), dxhat = u (1+s) gamma, xhat = (x - mu) rstd
//      = u * k_bc + (x - mu) * (-rstd^2 m2) + (-rstd m1)
// u is dy act'(z) (or dy without SiLU); it may alias dx (each element is read before written).
template <class T>
DF_SIMD_CLONES void dx_of_sample(const T* u, const T* x, const T* mean, const T* rstd, const T* gamma, const T* scale,
                  const double* U, const double* V, const Dims& d, int64_t b, T* dx) {
  // Per-channel copies of the per-group factors, so the inner loop is a plain vector FMA.
  std::vector<T> kk(d.C), exc(d.C), fxc(d.C), muc(d.C);
  const double cnt = static_cast<double>(d.N * d.Cg);
  for (int64_t g = 0; g < d.G; ++g) {
    double m1 = 0, m2 = 0;
    const double rs = rstd[b * d.G + g];
    for (int64_t c = g * d.Cg; c < (g + 1) * d.Cg; ++c) {
      const double w = (scale ? 1.0 + scale[b * d.C + c] : 1.0) * (gamma ? gamma[c] : 1.0);
      m1 += w * U[c];
      m2 += w * V[c];
      kk[c] = static_cast<T>(w * rs);
    }
    m1 /= cnt;
    m2 /= cnt;
    const T ex = static_cast<T>(-rs * rs * m2), fx = static_cast<T>(-rs * m1);
    for (int64_t c = g * d.Cg; c < (g + 1) * d.Cg; ++c) {
      exc[c] = ex;
      fxc[c] = fx;
      muc[c] = mean[b * d.G + g];
    }
  }
  const T *pk = kk.data(), *pe = exc.data(), *pf = fxc.data(), *pm = muc.data();
  for (int64_t n = 0; n < d.N; ++n) {
    const int64_t off = (b * d.N + n) * d.C;
    const T *xr = x + off, *ur = u + off;
    T* dr = dx + off;
#pragma omp simd
    for (int64_t c = 0; c < d.C; ++c) dr[c] = ur[c] * pk[c] + (xr[c] - pm[c]) * pe[c] + pf[c];
  }
}

// U[c] += sum_n u, V[c] += sum_n u * xhat over the N rows of one sample (dy, x at its first row),
// u = dy act'(z) written to `u_out` (when dx is wanted; else to the one-row `row`).
template <class T>
DF_SIMD_CLONES void sums_of_sample(const T* dy, const T* x, T* u_out, T* row, const T* mu, const T* rs, const T* a,
                                   const T* e, const Dims& d, bool silu, double* pU, double* pV) {
  for (int64_t n = 0; n < d.N; ++n) {
    const T *xr = x + n * d.C, *dr = dy + n * d.C;
    if (silu) {
      T* ur = u_out ? u_out + n * d.C : row;
#pragma omp simd
      for (int64_t c = 0; c < d.C; ++c) {
        // d/dz z sigmoid(z) = sigmoid(z) (1 + z (1 - sigmoid(z)))
        const T z = (xr[c] - mu[c]) * a[c] + e[c];
        const T sg = T(1) / (T(1) + cpu::exp_vec(-z));
        const T u = dr[c] * sg * (T(1) + z * (T(1) - sg));
        ur[c] = u;
        pU[c] += u;
        pV[c] += static_cast<double>(u) * ((xr[c] - mu[c]) * rs[c]);
      }
    } else {
#pragma omp simd
      for (int64_t c = 0; c < d.C; ++c) {
        pU[c] += dr[c];
        pV[c] += static_cast<double>(dr[c]) * ((xr[c] - mu[c]) * rs[c]);
      }
    }
  }
}

template <class T>
void fast_backward(const Tensor& dyt, const Tensor& xt, const Tensor& mt, const Tensor& rt, const Tensor& gt,
                   const Tensor& bt, const Tensor& st, const Tensor& tt, const GroupNormOptions& opt, const Dims& d,
                   GroupNormGrads& out) {
  const T *dy = dyt.data<T>(), *x = xt.data<T>(), *mean = mt.data<T>(), *rstd = rt.data<T>();
  const T *gamma = ptr_or_null<T>(gt), *beta = ptr_or_null<T>(bt);
  const T *scale = ptr_or_null<T>(st), *shift = ptr_or_null<T>(tt);
  const bool silu = opt.silu;
  // U[b,c] = sum_n u, V[b,c] = sum_n u * xhat (double). u = dy act'(z) is kept in dx (when dx
  // is wanted) so the second pass needs no sigmoid.
  std::vector<double> U(d.B * d.C, 0.0), V(d.B * d.C, 0.0);
  T* ubuf = ptr_or_null<T>(out.dx);
#pragma omp parallel if (d.B * d.N * d.C > 16384)
  {
    std::vector<T> mu(d.C), rs(d.C), a(d.C), e(d.C), row(d.C);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < d.B; ++b) {
      // xhat = (x - mu) * rs per channel; z = (x - mu) * a + e (as in forward).
      for (int64_t c = 0; c < d.C; ++c) {
        const int64_t g = c / d.Cg;
        const T ga = gamma ? gamma[c] : T(1), be = beta ? beta[c] : T(0);
        const T s1 = scale ? T(1) + scale[b * d.C + c] : T(1), t = shift ? shift[b * d.C + c] : T(0);
        mu[c] = mean[b * d.G + g];
        rs[c] = rstd[b * d.G + g];
        a[c] = rs[c] * ga * s1;
        e[c] = be * s1 + t;
      }
      double *pU = U.data() + b * d.C, *pV = V.data() + b * d.C;
      const int64_t off = b * d.N * d.C;
      sums_of_sample(dy + off, x + off, ubuf ? ubuf + off : nullptr, row.data(), mu.data(), rs.data(), a.data(),
                     e.data(), d, silu, pU, pV);
      // dx of this sample at once, while its rows are still in L2 (its factors need only its own
      // U and V): one pass over memory for the two.
      if (ubuf) dx_of_sample(silu ? ubuf : dy, x, mean, rstd, gamma, scale, pU, pV, d, b, ubuf);
    }
  }
  // Parameter gradients from U, V (see the top of the file).
  auto s1_of = [&](int64_t b, int64_t c) { return scale ? 1.0 + scale[b * d.C + c] : 1.0; };
  if (out.dshift.defined())
    for (int64_t i = 0; i < d.B * d.C; ++i) out.dshift.data<T>()[i] = static_cast<T>(U[i]);
  if (out.dscale.defined())
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t c = 0; c < d.C; ++c)
        out.dscale.data<T>()[b * d.C + c] = static_cast<T>((gamma ? gamma[c] : 1.0) * V[b * d.C + c] +
                                                           (beta ? beta[c] : 0.0) * U[b * d.C + c]);
  if (out.dgamma.defined() || out.dbeta.defined()) {
    std::vector<double> dg(d.C, 0.0), db(d.C, 0.0);
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t c = 0; c < d.C; ++c) {
        dg[c] += s1_of(b, c) * V[b * d.C + c];
        db[c] += s1_of(b, c) * U[b * d.C + c];
      }
    for (int64_t c = 0; c < d.C; ++c) {
      if (out.dgamma.defined()) out.dgamma.data<T>()[c] = static_cast<T>(dg[c]);
      if (out.dbeta.defined()) out.dbeta.data<T>()[c] = static_cast<T>(db[c]);
    }
  }
}

void check_outputs(const Tensor& x, const Dims& d, const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  check_same_shape(y, x, "group_norm y");
  check_dtype(y, x.dtype(), "group_norm y");
  for (const Tensor* s : {&mean, &rstd}) {
    DF_CHECK(s->numel() == d.B * d.G, "group_norm: mean/rstd must have B*G=", d.B * d.G, " elements, got ", s->str());
    check_dtype(*s, x.dtype(), "group_norm mean/rstd");
  }
}

void check_grads(const Tensor& dy, const Tensor& x, const Dims& d, const Tensor& mean, const Tensor& rstd,
                 const Tensor& gamma, const Tensor& beta, const Tensor& scale, const Tensor& shift,
                 const GroupNormGrads& g) {
  check_same_shape(dy, x, "group_norm dy");
  check_dtype(dy, x.dtype(), "group_norm dy");
  for (const Tensor* s : {&mean, &rstd}) {
    DF_CHECK(s->numel() == d.B * d.G, "group_norm: mean/rstd must have B*G=", d.B * d.G, " elements, got ", s->str());
    check_dtype(*s, x.dtype(), "group_norm mean/rstd");
  }
  auto chk = [&](const Tensor& grad, const Tensor& input, const char* what) {
    if (!grad.defined()) return;
    DF_CHECK(input.defined(), "group_norm: ", what, " requested for an undefined input");
    check_same_shape(grad, input, what);
    check_dtype(grad, x.dtype(), what);
  };
  if (g.dx.defined()) { check_same_shape(g.dx, x, "group_norm dx"); check_dtype(g.dx, x.dtype(), "group_norm dx"); }
  chk(g.dgamma, gamma, "dgamma");
  chk(g.dbeta, beta, "dbeta");
  chk(g.dscale, scale, "dscale");
  chk(g.dshift, shift, "dshift");
}


}  // namespace

namespace cpu {
void group_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& scale,
                        const Tensor& shift, const GroupNormOptions& opt, Tensor& y, Tensor& mean, Tensor& rstd) {
  Dims d = check_args(x, gamma, beta, scale, shift, opt);
  check_outputs(x, d, y, mean, rstd);
  if (x.dtype() == DType::f32)
    fast_forward<float>(x, gamma, beta, scale, shift, opt, d, y.data<float>(), mean.data<float>(), rstd.data<float>());
  else
    fast_forward<double>(x, gamma, beta, scale, shift, opt, d, y.data<double>(), mean.data<double>(),
                         rstd.data<double>());
}
void group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                         const Tensor& gamma, const Tensor& beta, const Tensor& scale, const Tensor& shift,
                         const GroupNormOptions& opt, GroupNormGrads& g) {
  Dims d = check_args(x, gamma, beta, scale, shift, opt);
  check_grads(dy, x, d, mean, rstd, gamma, beta, scale, shift, g);
  if (x.dtype() == DType::f32)
    fast_backward<float>(dy, x, mean, rstd, gamma, beta, scale, shift, opt, d, g);
  else
    fast_backward<double>(dy, x, mean, rstd, gamma, beta, scale, shift, opt, d, g);
}
}  // namespace cpu

namespace ref {
void group_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& scale,
                        const Tensor& shift, const GroupNormOptions& opt, Tensor& y, Tensor& mean, Tensor& rstd) {
  Dims d = check_args(x, gamma, beta, scale, shift, opt);
  check_outputs(x, d, y, mean, rstd);
  if (x.dtype() == DType::f32)
    ref_forward<float>(x, gamma, beta, scale, shift, opt, d, y.data<float>(), mean.data<float>(), rstd.data<float>());
  else
    ref_forward<double>(x, gamma, beta, scale, shift, opt, d, y.data<double>(), mean.data<double>(),
                        rstd.data<double>());
}
void group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                         const Tensor& gamma, const Tensor& beta, const Tensor& scale, const Tensor& shift,
                         const GroupNormOptions& opt, GroupNormGrads& g) {
  Dims d = check_args(x, gamma, beta, scale, shift, opt);
  check_grads(dy, x, d, mean, rstd, gamma, beta, scale, shift, g);
  if (x.dtype() == DType::f32)
    ref_backward<float>(dy, x, mean, rstd, gamma, beta, scale, shift, opt, d, g);
  else
    ref_backward<double>(dy, x, mean, rstd, gamma, beta, scale, shift, opt, d, g);
}
}  // namespace ref

}  // namespace diffuse::kernels

namespace diffuse::kernels {

namespace {
Tensor like_if(const Tensor& t, bool want) {
  return want && t.defined() ? Tensor::empty(t.shape(), t.dtype()) : Tensor();
}
}  // namespace

GroupNormResult group_norm_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, const Tensor& scale,
                                   const Tensor& shift, const GroupNormOptions& opt) {
  DF_PROFILE("group_norm_forward");
  if (x.device().is_cpu()) {
    GroupNormResult r;
    r.y = Tensor::empty(x.shape(), x.dtype());
    r.mean = Tensor::empty({x.size(0), opt.groups}, x.dtype());
    r.rstd = Tensor::empty({x.size(0), opt.groups}, x.dtype());
    cpu::group_norm_forward(x, gamma, beta, scale, shift, opt, r.y, r.mean, r.rstd);
    return r;
  }
  DF_ON_CUDA(x.device(), cuda::group_norm_forward(x, gamma, beta, scale, shift, opt));
  unsupported_device("group_norm", x.device());
}

GroupNormGrads group_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                                   const Tensor& gamma, const Tensor& beta, const Tensor& scale,
                                   const Tensor& shift, const GroupNormOptions& opt) {
  DF_PROFILE("group_norm_backward");
  if (x.device().is_cpu()) {
    GroupNormGrads g;
    g.dx = Tensor::empty(x.shape(), x.dtype());
    g.dgamma = like_if(gamma, true);
    g.dbeta = like_if(beta, true);
    g.dscale = like_if(scale, true);
    g.dshift = like_if(shift, true);
    cpu::group_norm_backward(dy, x, mean, rstd, gamma, beta, scale, shift, opt, g);
    return g;
  }
  DF_ON_CUDA(x.device(), cuda::group_norm_backward(dy, x, mean, rstd, gamma, beta, scale, shift, opt));
  unsupported_device("group_norm", x.device());
}

}  // namespace diffuse::kernels
