// models/diffusion/likelihood.cpp: see likelihood.h for the bounds and their sources.
#include "models/diffusion/likelihood.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/check.h"
#include "core/philox.h"

namespace diffuse::diffusion {
namespace {

Tensor fill_times(int64_t B, const std::vector<double>& t) {
  Tensor out = Tensor::empty({B});
  for (int64_t b = 0; b < B; ++b) out.data<float>()[b] = static_cast<float>(t[b]);
  return out;
}

BitsPerDim summarize(const std::vector<double>& prior, const std::vector<double>& diff, const std::vector<double>& dec,
                     int64_t dims) {
  BitsPerDim r;
  const size_t B = prior.size();
  const double k = 1.0 / (static_cast<double>(dims) * std::numbers::ln2);
  for (size_t b = 0; b < B; ++b) {
    r.per_sample.push_back((prior[b] + diff[b] + dec[b]) * k);
    r.prior_bpd += prior[b] * k / B;
    r.diffusion_bpd += diff[b] * k / B;
    r.decoder_bpd += dec[b] * k / B;
  }
  for (double v : r.per_sample) r.bpd += v / B;
  double var = 0;
  for (double v : r.per_sample) var += (v - r.bpd) * (v - r.bpd);
  r.stderr_bpd = B > 1 ? std::sqrt(var / (B - 1) / B) : 0.0;
  return r;
}

std::vector<double> to_doubles(const Tensor& t) {
  std::vector<float> v = t.to_vector();
  return {v.begin(), v.end()};
}

}  // namespace

BitsPerDim vlb_bits_per_dim(const DiscreteSchedule& s, const Denoiser& f, const Tensor& x0, const VlbOptions& o) {
  DF_CHECK(f, "vlb_bits_per_dim: no denoiser");
  check_dtype(x0, DType::f32, "vlb_bits_per_dim");
  const int64_t B = x0.size(0), D = x0.numel() / B;
  const int T = s.T();
  std::vector<double> prior = to_doubles(prior_kl(s, x0)), diff(B, 0.0), dec(B, 0.0);
  // One term at step i for the whole batch: the forward-process noise of stream (seed, 1 + i).
  auto term = [&](int i) {
    const double a = std::sqrt(s.alphas_cumprod()[i]), sg = std::sqrt(1.0 - s.alphas_cumprod()[i]);
    Tensor z = q_sample(x0, Tensor::randn(x0.shape(), o.seed, 1 + static_cast<uint64_t>(i)), std::vector<double>(B, a),
                        std::vector<double>(B, sg));
    Tensor out = f(z, Tensor::full({B}, s.t_of(i)), o.labels);
    return to_doubles(vlb_term(s, i, x0, z, out, o.prediction, o.variance, o.clip_x0));
  };
  dec = term(0);
  if (o.strata <= 0 || o.strata >= T - 1) {
    for (int i = 1; i < T; ++i) {
      std::vector<double> l = term(i);
      for (int64_t b = 0; b < B; ++b) diff[b] += l[b];
    }
  } else {
    // Strata of the steps 1..T-1: [lo_k, hi_k), sizes differing by at most one.
    const int K = o.strata, n = T - 1;
    for (int k = 0; k < K; ++k) {
      const int lo = 1 + static_cast<int>(static_cast<int64_t>(n) * k / K), hi = 1 + static_cast<int>(static_cast<int64_t>(n) * (k + 1) / K);
      std::vector<int> idx(B);
      std::vector<double> a(B), sg(B), t(B);
      for (int64_t b = 0; b < B; ++b) {
        const double u = philox_uniform(o.seed, 2 * static_cast<uint64_t>(T) + 1 + k, static_cast<uint64_t>(b));
        idx[b] = std::min(hi - 1, lo + static_cast<int>(u * (hi - lo)));
        a[b] = std::sqrt(s.alphas_cumprod()[idx[b]]);
        sg[b] = std::sqrt(1.0 - s.alphas_cumprod()[idx[b]]);
        t[b] = s.t_of(idx[b]);
      }
      Tensor z = q_sample(x0, Tensor::randn(x0.shape(), o.seed, static_cast<uint64_t>(T) + 1 + k), a, sg);
      Tensor out = f(z, fill_times(B, t), o.labels);
      // Each sample has its own step: evaluate its term on its one-row views.
      for (int64_t b = 0; b < B; ++b) {
        Tensor l = vlb_term(s, idx[b], x0.slice(b, b + 1), z.slice(b, b + 1), out.slice(b, b + 1), o.prediction,
                            o.variance, o.clip_x0);
        diff[b] += static_cast<double>(hi - lo) * l.item();
      }
    }
  }
  return summarize(prior, diff, dec, D);
}

Tensor vdm_reconstruction_nll(const Tensor& x0, const Tensor& z0, double gamma0) {
  check_same_shape(x0, z0, "vdm_reconstruction_nll");
  const int64_t B = x0.size(0), D = x0.numel() / B;
  const double a0 = std::sqrt(sigmoid(-gamma0)), prec = std::exp(-gamma0);
  const float *x = x0.data<float>(), *z = z0.data<float>();
  Tensor out = Tensor::empty({B});
  std::vector<double> logits(256);
  for (int64_t b = 0; b < B; ++b) {
    double acc = 0;
    for (int64_t j = b * D; j < (b + 1) * D; ++j) {
      const double zr = z[j] / a0;
      double mx = -1e300;
      for (int k = 0; k < 256; ++k) {
        const double d = zr - (2.0 * k / 255.0 - 1.0);
        logits[k] = -0.5 * prec * d * d;
        mx = std::max(mx, logits[k]);
      }
      double se = 0;
      for (double l : logits) se += std::exp(l - mx);
      const int k = std::clamp(static_cast<int>(std::lround((x[j] + 1.0) * 127.5)), 0, 255);
      acc -= logits[k] - mx - std::log(se);
    }
    out.data<float>()[b] = static_cast<float>(acc);
  }
  return out;
}

BitsPerDim vdm_bits_per_dim(const Schedule& s, const Denoiser& f, const Tensor& x0, const VdmBoundOptions& o) {
  DF_CHECK(f, "vdm_bits_per_dim: no denoiser");
  DF_CHECK(o.t_samples >= 1, "vdm_bits_per_dim: t_samples = ", o.t_samples);
  check_dtype(x0, DType::f32, "vdm_bits_per_dim");
  const int64_t B = x0.size(0), D = x0.numel() / B;
  const double g0 = s.gamma(0.0);
  DF_CHECK(std::isfinite(g0), "vdm_bits_per_dim: needs a finite gamma(0) (a continuous schedule)");
  std::vector<double> prior = to_doubles(prior_kl(s, x0)), diff(B, 0.0);
  // Reconstruction at t = 0 with the noise of stream (seed, 0).
  const double a0 = std::sqrt(sigmoid(-g0)), s0 = std::sqrt(sigmoid(g0));
  Tensor z0 = q_sample(x0, Tensor::randn(x0.shape(), o.seed, 0), std::vector<double>(B, a0), std::vector<double>(B, s0));
  std::vector<double> dec = to_doubles(vdm_reconstruction_nll(x0, z0, g0));
  for (int r = 0; r < o.t_samples; ++r) {
    const uint64_t off = 1 + 2 * static_cast<uint64_t>(r);
    std::vector<double> t = low_discrepancy_times(static_cast<int>(B), o.seed, off);
    std::vector<double> a(B), sg(B), dg(B);
    for (int64_t b = 0; b < B; ++b) {
      const double g = s.gamma(t[b]);
      a[b] = std::sqrt(sigmoid(-g));
      sg[b] = std::sqrt(sigmoid(g));
      dg[b] = s.dgamma_dt(t[b]);
    }
    Tensor eps = Tensor::randn(x0.shape(), o.seed, off + 1);
    Tensor z = q_sample(x0, eps, a, sg);
    Tensor out = f(z, fill_times(B, t), o.labels);
    Tensor eps_hat = convert_prediction(o.prediction, Prediction::eps, z, out, a, sg);
    std::vector<double> l = to_doubles(vdm_diffusion_loss(eps, eps_hat, dg));
    for (int64_t b = 0; b < B; ++b) diff[b] += l[b] / o.t_samples;
  }
  return summarize(prior, diff, dec, D);
}

}  // namespace diffuse::diffusion
