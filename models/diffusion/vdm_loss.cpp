// models/diffusion/vdm_loss.cpp: see vdm_loss.h for the terms, their units and their sources.
#include "models/diffusion/vdm_loss.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "autograd/elementwise.h"
#include "autograd/linalg.h"
#include "core/check.h"

namespace diffuse::diffusion {

namespace {

// (B) -> (B, 1, ..., 1) with x's rank: the per-sample fast path of ag broadcasting.
ag::Var per_sample(const ag::Var& v, const Tensor& x) {
  Shape s = x.shape();
  for (int d = 1; d < x.dim(); ++d) s[d] = 1;
  return ag::reshape(v, s);
}

// A constant in the dtype and on the device of the variable it meets.
Tensor like(const Tensor& t, const ag::Var& v) { return t.to(v.dtype()).to(v.device()); }

void check_batch(const Tensor& x, const ag::Var& v, const char* what) {
  DF_CHECK(x.defined() && x.dim() >= 2 && v.defined() && v.dim() == 1 && v.size(0) == x.size(0), what, ": ",
           v.defined() ? v.value().str() : std::string("undefined"), " for data ",
           x.defined() ? x.str() : std::string("undefined"), " (expected (B) for (B, ...))");
}

void check_scalar(const ag::Var& v, const char* what) {
  DF_CHECK(v.defined() && v.numel() == 1, what, ": gamma must be one value, got ",
           v.defined() ? v.value().str() : std::string("undefined"));
}

}  // namespace

ag::Var vdm_q_sample(const Tensor& x, const Tensor& eps, const ag::Var& gamma) {
  check_batch(x, gamma, "vdm_q_sample");
  check_same_shape(x, eps, "vdm_q_sample");
  // alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma) (VDM eq. 4 with the variance-preserving
  // convention of schedule.h).
  ag::Var alpha = per_sample(ag::sqrt(ag::sigmoid(ag::neg(gamma))), x);
  ag::Var sigma = per_sample(ag::sqrt(ag::sigmoid(gamma)), x);
  return ag::add(ag::mul(alpha, ag::Var(like(x, gamma))), ag::mul(sigma, ag::Var(like(eps, gamma))));
}

ag::Var vdm_prior_kl(const Tensor& x, const ag::Var& gamma1) {
  DF_CHECK(x.defined() && x.dim() >= 1, "vdm_prior_kl: no data");
  check_scalar(gamma1, "vdm_prior_kl");
  const int64_t B = x.size(0), N = x.numel() / B;
  // sum_j x_j^2 per sample, a constant of the data.
  const Tensor xd = x.to(Device::cpu()).to(DType::f64);
  Tensor sx2 = Tensor::empty({B}, DType::f64);
  for (int64_t b = 0; b < B; ++b) {
    double acc = 0;
    for (int64_t j = b * N; j < (b + 1) * N; ++j) acc += xd.data<double>()[j] * xd.data<double>()[j];
    sx2.data<double>()[b] = acc;
  }
  const ag::Var g = ag::reshape(gamma1, {1});
  ag::Var a2 = ag::sigmoid(ag::neg(g));
  ag::Var s2 = ag::sigmoid(g);
  // log sigma^2 = log sigmoid(g) = -softplus(-g): no log of a rounded sigmoid.
  ag::Var log_s2 = ag::neg(ag::softplus(ag::neg(g)));
  ag::Var per_elem = ag::add_scalar(ag::sub(s2, log_s2), -1.0);  // sigma^2 - log sigma^2 - 1
  return ag::mul_scalar(ag::add(ag::mul(ag::Var(like(sx2, g)), a2), ag::mul_scalar(per_elem, static_cast<double>(N))),
                        0.5);
}

ag::Var vdm_reconstruction_nll(const Tensor& x, const Tensor& eps0, const ag::Var& gamma0) {
  DF_CHECK(x.defined() && x.dim() >= 1, "vdm_reconstruction_nll: no data");
  check_same_shape(x, eps0, "vdm_reconstruction_nll");
  check_scalar(gamma0, "vdm_reconstruction_nll");
  const int64_t B = x.size(0), N = x.numel() / B;
  const Tensor xd = x.to(Device::cpu()).to(DType::f64), ed = eps0.to(Device::cpu()).to(DType::f64);
  const double g = gamma0.value().to(Device::cpu()).to(DType::f64).data<double>()[0];
  DF_CHECK(std::isfinite(g), "vdm_reconstruction_nll: gamma_0 = ", g);
  const double prec = std::exp(-g), noise = std::exp(0.5 * g);
  const double* xp = xd.data<double>();
  const double* ep = ed.data<double>();
  Tensor value = Tensor::empty({B}, DType::f64);
  // Forward returns what backward needs: d L_0 / d gamma_0 per sample.
  std::vector<double> dvalue(static_cast<size_t>(B), 0.0);
  std::vector<double> logits(256);
  for (int64_t b = 0; b < B; ++b) {
    double acc = 0, dacc = 0;
    for (int64_t j = b * N; j < (b + 1) * N; ++j) {
      const double zr = xp[j] + noise * ep[j];  // z_0 / alpha_0
      double mx = -1e300;
      for (int k = 0; k < 256; ++k) {
        const double u = zr - (2.0 * k / 255.0 - 1.0);
        logits[k] = -0.5 * prec * u * u;
        mx = std::max(mx, logits[k]);
      }
      double se = 0, sdl = 0;  // sum_k e^{l_k - max}, and the same weighted by dl_k/dg
      for (int k = 0; k < 256; ++k) {
        const double xk = 2.0 * k / 255.0 - 1.0;
        const double w = std::exp(logits[k] - mx);
        se += w;
        sdl += w * 0.5 * prec * (zr - xk) * (xp[j] - xk);
      }
      const int kj = std::clamp(static_cast<int>(std::lround((xp[j] + 1.0) * 127.5)), 0, 255);
      const double xj = 2.0 * kj / 255.0 - 1.0;
      acc -= logits[kj] - mx - std::log(se);
      dacc += sdl / se - 0.5 * prec * (zr - xj) * (xp[j] - xj);
    }
    value.data<double>()[b] = acc;
    dvalue[static_cast<size_t>(b)] = dacc;
  }
  const DType dtype = gamma0.dtype();
  const Device device = gamma0.device();
  const Shape gshape = gamma0.shape();
  return ag::record("vdm_reconstruction_nll", value.to(dtype).to(device), {gamma0},
                    [dvalue, dtype, device, gshape, B](const Tensor& gout) {
                      const Tensor gh = gout.to(Device::cpu()).to(DType::f64);
                      double d = 0;
                      for (int64_t b = 0; b < B; ++b) d += gh.data<double>()[b] * dvalue[static_cast<size_t>(b)];
                      return std::vector<Tensor>{Tensor::full(gshape, d, DType::f64).to(dtype).to(device)};
                    });
}

ag::Var vdm_diffusion_loss(const Tensor& eps, const ag::Var& eps_hat, const ag::Var& dgamma) {
  DF_CHECK(eps_hat.defined(), "vdm_diffusion_loss: no prediction");
  check_same_shape(eps, eps_hat.value(), "vdm_diffusion_loss");
  check_batch(eps, dgamma, "vdm_diffusion_loss");
  const int64_t N = eps.numel() / eps.size(0);
  // per_sample_mse is the mean over the N elements: times N/2 gives 0.5 ||eps - eps_hat||^2.
  ag::Var sq = ag::mul_scalar(ag::per_sample_mse(eps_hat, ag::Var(like(eps, eps_hat))), 0.5 * static_cast<double>(N));
  return ag::mul(dgamma, sq);
}

VdmLoss vdm_loss(const Tensor& x, const Tensor& eps, const ag::Var& eps_hat, const ag::Var& dgamma_t,
                 const Tensor& eps0, const ag::Var& gamma0, const ag::Var& gamma1) {
  const int64_t B = x.size(0), N = x.numel() / B;
  const double to_bpd = 1.0 / (static_cast<double>(N) * std::numbers::ln2);
  VdmLoss l;
  l.prior = ag::mul_scalar(ag::mean_all(vdm_prior_kl(x, gamma1)), to_bpd);
  l.reconstruction = ag::mul_scalar(ag::mean_all(vdm_reconstruction_nll(x, eps0, gamma0)), to_bpd);
  l.diffusion = ag::mul_scalar(ag::mean_all(vdm_diffusion_loss(eps, eps_hat, dgamma_t)), to_bpd);
  l.loss = ag::add(ag::add(l.prior, l.reconstruction), l.diffusion);
  return l;
}

}  // namespace diffuse::diffusion
