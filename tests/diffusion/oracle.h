// tests/diffusion/oracle.h: data whose optimal denoiser is closed form, so the diffusion math can
// be tested exactly without a trained network.
//
// Data: a mixture of Gaussians with diagonal covariance over D dimensions (K = 1: a Gaussian).
// With z_t = a x + s eps (a = alpha_t, s = sigma_t), each component k gives
//   z_t | k ~ N(a mu_k, v_k),  v_k = a^2 s_k^2 + s^2 (per dimension),
//   E[x | z_t, k] = mu_k + a s_k^2 / v_k (z_t - a mu_k),  Var[x | z_t, k] = s_k^2 s^2 / v_k,
// and the posterior over components is w_k ∝ pi_k N(z_t; a mu_k, v_k). The optimal (MMSE)
// denoiser is E[x | z_t] = sum_k w_k E[x | z_t, k], and E[eps | z_t] = (z_t - a E[x | z_t]) / s.
#pragma once

#include <cmath>
#include <vector>

#include "core/tensor.h"
#include "models/diffusion/sampler.h"

namespace diffuse::test {

struct Mixture {
  std::vector<double> weight;              // K
  std::vector<std::vector<double>> mean;   // K x D
  std::vector<std::vector<double>> stdev;  // K x D
  int D() const { return static_cast<int>(mean[0].size()); }
  int K() const { return static_cast<int>(weight.size()); }

  static Mixture gaussian(std::vector<double> mu, std::vector<double> s) { return {{1.0}, {std::move(mu)}, {std::move(s)}}; }

  // Posterior mean of x given z at level (a, s): one sample of D values.
  void posterior_mean(const float* z, double a, double s, double* x0) const {
    const int d = D(), k = K();
    std::vector<double> logw(k);
    double mx = -1e300;
    for (int c = 0; c < k; ++c) {
      double lw = std::log(weight[c]);
      for (int j = 0; j < d; ++j) {
        const double v = a * a * stdev[c][j] * stdev[c][j] + s * s;
        const double r = z[j] - a * mean[c][j];
        lw += -0.5 * std::log(v) - 0.5 * r * r / v;
      }
      logw[c] = lw;
      mx = std::max(mx, lw);
    }
    double tot = 0;
    for (double& lw : logw) tot += (lw = std::exp(lw - mx));
    for (int j = 0; j < d; ++j) x0[j] = 0;
    for (int c = 0; c < k; ++c)
      for (int j = 0; j < d; ++j) {
        const double v = a * a * stdev[c][j] * stdev[c][j] + s * s;
        x0[j] += logw[c] / tot * (mean[c][j] + a * stdev[c][j] * stdev[c][j] / v * (z[j] - a * mean[c][j]));
      }
  }

  // Data mean and (diagonal + cross) covariance of the mixture, D x D row-major.
  std::vector<double> data_mean() const {
    std::vector<double> m(D(), 0.0);
    for (int c = 0; c < K(); ++c)
      for (int j = 0; j < D(); ++j) m[j] += weight[c] * mean[c][j];
    return m;
  }
  std::vector<double> data_cov() const {
    const int d = D();
    std::vector<double> m = data_mean(), cov(d * d, 0.0);
    for (int c = 0; c < K(); ++c)
      for (int i = 0; i < d; ++i)
        for (int j = 0; j < d; ++j) {
          double e = (mean[c][i] - m[i]) * (mean[c][j] - m[j]);
          if (i == j) e += stdev[c][i] * stdev[c][i];
          cov[i * d + j] += weight[c] * e;
        }
    return cov;
  }

  // x ~ data, (B, D), from a Philox stream.
  Tensor sample(int64_t B, uint64_t seed) const {
    const int d = D();
    Tensor u = Tensor::rand({B}, seed, 1);
    Tensor n = Tensor::randn({B, d}, seed, 2);
    Tensor x = Tensor::empty({B, d});
    const float* up = u.data<float>();
    const float* np = n.data<float>();
    float* xp = x.data<float>();
    for (int64_t b = 0; b < B; ++b) {
      int c = 0;
      double acc = weight[0];
      while (c + 1 < K() && up[b] >= acc) acc += weight[++c];
      for (int j = 0; j < d; ++j) xp[b * d + j] = static_cast<float>(mean[c][j] + stdev[c][j] * np[b * d + j]);
    }
    return x;
  }
};

// The optimal denoiser of `m` under schedule `s`, returning the requested prediction. Counts its
// calls and the rows it saw.
struct Oracle {
  const diffusion::Schedule* sched;
  Mixture mix;
  diffusion::Prediction pred = diffusion::Prediction::eps;
  int calls = 0;
  int64_t rows = 0;

  Tensor operator()(const Tensor& z, const Tensor& t, const Tensor& /*labels*/) {
    ++calls;
    const int64_t B = z.size(0);
    rows += B;
    const int d = mix.D();
    Tensor out = Tensor::empty(z.shape());
    const float* zp = z.data<float>();
    const float* tp = t.data<float>();
    float* op = out.data<float>();
    std::vector<double> x0(d);
    for (int64_t b = 0; b < B; ++b) {
      const double g = sched->gamma(tp[b]);
      const double a = std::sqrt(diffusion::sigmoid(-g)), s = std::sqrt(diffusion::sigmoid(g));
      mix.posterior_mean(zp + b * d, a, s, x0.data());
      for (int j = 0; j < d; ++j) {
        const double z0 = zp[b * d + j];
        const double eps = (z0 - a * x0[j]) / s;
        double v = pred == diffusion::Prediction::eps ? eps : pred == diffusion::Prediction::x0 ? x0[j] : a * eps - s * x0[j];
        op[b * d + j] = static_cast<float>(v);
      }
    }
    return out;
  }
  diffusion::Denoiser fn() {
    return [this](const Tensor& z, const Tensor& t, const Tensor& y) { return (*this)(z, t, y); };
  }
};

// The exact probability-flow map of Gaussian data from z at level (aT, sT) to level (a0, s0),
// divided by a0 as the samplers return it. The ODE pushes N(a mu, a^2 s^2 + sigma^2) through the
// monotone affine map per dimension, so with u = (z - aT mu) / sqrt(aT^2 s^2 + sT^2),
// z_0 = a0 mu + sqrt(a0^2 s^2 + s0^2) u; at (a0, s0) = (1, 0): x0 = mu + s u.
inline Tensor gaussian_ode_map(const Mixture& g, const Tensor& zT, double aT, double sT, double a0 = 1, double s0 = 0) {
  const int d = g.D();
  Tensor x = Tensor::empty(zT.shape());
  const float* z = zT.data<float>();
  float* xp = x.data<float>();
  for (int64_t b = 0; b < zT.size(0); ++b)
    for (int j = 0; j < d; ++j) {
      const double mu = g.mean[0][j], s = g.stdev[0][j];
      const double u = (z[b * d + j] - aT * mu) / std::sqrt(aT * aT * s * s + sT * sT);
      xp[b * d + j] = static_cast<float>((a0 * mu + std::sqrt(a0 * a0 * s * s + s0 * s0) * u) / a0);
    }
  return x;
}

// Sample mean and covariance of x (B, D).
struct Moments {
  std::vector<double> mean, cov;
};
inline Moments moments(const Tensor& x) {
  const int64_t B = x.size(0);
  const int d = static_cast<int>(x.size(1));
  const float* p = x.data<float>();
  Moments m{std::vector<double>(d, 0.0), std::vector<double>(d * d, 0.0)};
  for (int64_t b = 0; b < B; ++b)
    for (int j = 0; j < d; ++j) m.mean[j] += p[b * d + j] / static_cast<double>(B);
  for (int64_t b = 0; b < B; ++b)
    for (int i = 0; i < d; ++i)
      for (int j = 0; j < d; ++j)
        m.cov[i * d + j] += (p[b * d + i] - m.mean[i]) * (p[b * d + j] - m.mean[j]) / static_cast<double>(B - 1);
  return m;
}

// Max over entries of |sample - true| / standard error, for the mean and the covariance, with the
// standard errors of a sample of B from the true distribution (var of a sample covariance entry:
// (S_ii S_jj + S_ij^2) / (B - 1), exact for Gaussians; mixtures add kurtosis, so callers pick a
// margin).
inline double moment_z(const Moments& m, const std::vector<double>& mean, const std::vector<double>& cov, int64_t B) {
  const int d = static_cast<int>(mean.size());
  double worst = 0;
  for (int i = 0; i < d; ++i) worst = std::max(worst, std::fabs(m.mean[i] - mean[i]) / std::sqrt(cov[i * d + i] / B));
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < d; ++j) {
      const double se = std::sqrt((cov[i * d + i] * cov[j * d + j] + cov[i * d + j] * cov[i * d + j]) / (B - 1));
      worst = std::max(worst, std::fabs(m.cov[i * d + j] - cov[i * d + j]) / se);
    }
  return worst;
}

}  // namespace diffuse::test
