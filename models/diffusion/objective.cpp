// models/diffusion/objective.cpp: see objective.h for the formulas' sources.
#include "models/diffusion/objective.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <tuple>
#include <utility>

#include "core/check.h"
#include "core/philox.h"
#include "kernels/learned_variance_vlb.h"

namespace diffuse::diffusion {
namespace {

int64_t batch_of(const Tensor& t) {
  DF_CHECK(t.defined() && t.dim() >= 1, "diffusion: expected a (B, ...) tensor");
  check_device(t, Device::cpu(), "diffusion");
  check_dtype(t, DType::f32, "diffusion");
  return t.size(0);
}

int64_t per_sample(const Tensor& t) { return t.numel() / std::max<int64_t>(t.size(0), 1); }

void check_levels(const Tensor& t, const std::vector<double>& a, const std::vector<double>& s) {
  DF_CHECK(static_cast<int64_t>(a.size()) == t.size(0) && a.size() == s.size(), "diffusion: need one alpha and sigma per sample, got ",
           a.size(), " and ", s.size(), " for batch ", t.size(0));
}

}  // namespace

const char* to_string(Prediction p) {
  switch (p) {
    case Prediction::eps: return "eps";
    case Prediction::x0: return "x0";
    default: return "v";
  }
}

Tensor q_sample(const Tensor& x0, const Tensor& eps, const std::vector<double>& alpha, const std::vector<double>& sigma) {
  const int64_t B = batch_of(x0);
  check_same_shape(x0, eps, "q_sample");
  check_levels(x0, alpha, sigma);
  const int64_t N = per_sample(x0);
  Tensor z = Tensor::empty(x0.shape());
  const float* a = x0.data<float>();
  const float* e = eps.data<float>();
  float* o = z.data<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = b * N; j < (b + 1) * N; ++j) o[j] = static_cast<float>(alpha[b] * a[j] + sigma[b] * e[j]);
  return z;
}

Tensor convert_prediction(Prediction from, Prediction to, const Tensor& z, const Tensor& pred,
                          const std::vector<double>& alpha, const std::vector<double>& sigma) {
  const int64_t B = batch_of(z);
  check_same_shape(z, pred, "convert_prediction");
  check_levels(z, alpha, sigma);
  if (from == to) return pred.clone();
  const int64_t N = per_sample(z);
  Tensor out = Tensor::empty(z.shape());
  const float* zp = z.data<float>();
  const float* p = pred.data<float>();
  float* o = out.data<float>();
  for (int64_t b = 0; b < B; ++b) {
    const double a = alpha[b], s = sigma[b];
    for (int64_t j = b * N; j < (b + 1) * N; ++j) {
      double x0, eps;
      switch (from) {
        case Prediction::eps: eps = p[j]; x0 = (zp[j] - s * eps) / a; break;
        case Prediction::x0: x0 = p[j]; eps = (zp[j] - a * x0) / s; break;
        default: x0 = a * zp[j] - s * p[j]; eps = s * zp[j] + a * p[j]; break;
      }
      o[j] = static_cast<float>(to == Prediction::eps ? eps : to == Prediction::x0 ? x0 : a * eps - s * x0);
    }
  }
  return out;
}

Tensor prediction_target(Prediction p, const Tensor& x0, const Tensor& eps, const std::vector<double>& alpha,
                         const std::vector<double>& sigma) {
  if (p == Prediction::eps) return eps.clone();
  if (p == Prediction::x0) return x0.clone();
  const int64_t B = batch_of(x0);
  check_same_shape(x0, eps, "prediction_target");
  check_levels(x0, alpha, sigma);
  const int64_t N = per_sample(x0);
  Tensor v = Tensor::empty(x0.shape());
  const float* a = x0.data<float>();
  const float* e = eps.data<float>();
  float* o = v.data<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = b * N; j < (b + 1) * N; ++j) o[j] = static_cast<float>(alpha[b] * e[j] - sigma[b] * a[j]);
  return v;
}

std::pair<Tensor, Tensor> split_learned_variance(const Tensor& out) {
  batch_of(out);
  const int64_t C2 = out.size(-1);
  DF_CHECK(C2 % 2 == 0, "split_learned_variance: last dimension ", C2, " is odd");
  std::vector<int64_t> dims = out.shape().vec();
  dims.back() = C2 / 2;
  Tensor m = Tensor::empty(Shape(dims)), v = Tensor::empty(Shape(dims));
  const float* p = out.data<float>();
  float* mp = m.data<float>();
  float* vp = v.data<float>();
  const int64_t rows = out.numel() / C2, C = C2 / 2;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < C; ++c) {
      mp[r * C + c] = p[r * C2 + c];
      vp[r * C + c] = p[r * C2 + C + c];
    }
  return {m, v};
}

// ---- simple losses ---------------------------------------------------------------------------

Tensor mse_per_sample(const Tensor& a, const Tensor& b) {
  const int64_t B = batch_of(a);
  check_same_shape(a, b, "mse_per_sample");
  const int64_t N = per_sample(a);
  Tensor out = Tensor::empty({B});
  const float* x = a.data<float>();
  const float* y = b.data<float>();
  for (int64_t s = 0; s < B; ++s) {
    double acc = 0;
    for (int64_t j = s * N; j < (s + 1) * N; ++j) {
      const double d = static_cast<double>(x[j]) - y[j];
      acc += d * d;
    }
    out.data<float>()[s] = static_cast<float>(acc / N);
  }
  return out;
}

double l_simple(const Tensor& target, const Tensor& pred, const std::vector<double>& weights) {
  const std::vector<float> m = mse_per_sample(target, pred).to_vector();
  DF_CHECK(weights.empty() || weights.size() == m.size(), "l_simple: ", weights.size(), " weights for ", m.size(), " samples");
  double acc = 0;
  for (size_t i = 0; i < m.size(); ++i) acc += (weights.empty() ? 1.0 : weights[i]) * m[i];
  return acc / static_cast<double>(m.size());
}

double min_snr_weight(Prediction p, double snr, double gamma) {
  const double m = std::min(snr, gamma);
  switch (p) {
    case Prediction::eps: return m / snr;
    case Prediction::x0: return m;
    default: return m / (snr + 1.0);
  }
}

// ---- Gaussian VLB terms ----------------------------------------------------------------------

double normal_kl(double m1, double lv1, double m2, double lv2) {
  const double d = m1 - m2;
  return 0.5 * (-1.0 + lv2 - lv1 + std::exp(lv1 - lv2) + d * d * std::exp(-lv2));
}

double normal_kl_dlv2(double m1, double lv1, double m2, double lv2) {
  const double d = m1 - m2;
  return 0.5 * (1.0 - std::exp(lv1 - lv2) - d * d * std::exp(-lv2));
}

Tensor normal_kl_per_sample(const Tensor& m1, const Tensor& lv1, const Tensor& m2, const Tensor& lv2) {
  const int64_t B = batch_of(m1);
  check_same_shape(m1, lv1, "normal_kl");
  check_same_shape(m1, m2, "normal_kl");
  check_same_shape(m1, lv2, "normal_kl");
  const int64_t N = per_sample(m1);
  const float *a = m1.data<float>(), *la = lv1.data<float>(), *b = m2.data<float>(), *lb = lv2.data<float>();
  Tensor out = Tensor::empty({B});
  for (int64_t s = 0; s < B; ++s) {
    double acc = 0;
    for (int64_t j = s * N; j < (s + 1) * N; ++j) acc += normal_kl(a[j], la[j], b[j], lb[j]);
    out.data<float>()[s] = static_cast<float>(acc);
  }
  return out;
}

double discretized_gaussian_log_likelihood(double x, double mean, double log_scale) {
  return kernels::discretized_gaussian_decoder(x, mean, log_scale).log_p;
}

Tensor discretized_gaussian_log_likelihood(const Tensor& x, const Tensor& mean, const Tensor& log_scale) {
  check_same_shape(x, mean, "discretized_gaussian_log_likelihood");
  check_same_shape(x, log_scale, "discretized_gaussian_log_likelihood");
  Tensor out = Tensor::empty(x.shape());
  const float *a = x.data<float>(), *m = mean.data<float>(), *l = log_scale.data<float>();
  float* o = out.data<float>();
  for (int64_t j = 0; j < x.numel(); ++j) o[j] = static_cast<float>(discretized_gaussian_log_likelihood(a[j], m[j], l[j]));
  return out;
}

Tensor prior_kl(const Schedule& s, const Tensor& x0) {
  const int64_t B = batch_of(x0);
  const int64_t N = per_sample(x0);
  const double a2 = s.alpha2(1.0), s2 = s.sigma2(1.0), ls2 = std::log(s2);
  const float* x = x0.data<float>();
  Tensor out = Tensor::empty({B});
  for (int64_t b = 0; b < B; ++b) {
    double acc = 0;
    // KL(N(alpha x, sigma^2) || N(0, 1)) = 0.5 (sigma^2 + alpha^2 x^2 - 1 - log sigma^2).
    for (int64_t j = b * N; j < (b + 1) * N; ++j) acc += 0.5 * (s2 + a2 * x[j] * x[j] - 1.0 - ls2);
    out.data<float>()[b] = static_cast<float>(acc);
  }
  return out;
}

Posterior q_posterior(const DiscreteSchedule& s, int i, const Tensor& x0, const Tensor& xt) {
  DF_CHECK(i >= 0 && i < s.T(), "q_posterior: step ", i, " of ", s.T());
  check_same_shape(x0, xt, "q_posterior");
  Tensor mean = Tensor::empty(x0.shape());
  const double c1 = s.posterior_mean_coef1()[i], c2 = s.posterior_mean_coef2()[i];
  const float *a = x0.data<float>(), *b = xt.data<float>();
  float* m = mean.data<float>();
  for (int64_t j = 0; j < x0.numel(); ++j) m[j] = static_cast<float>(c1 * a[j] + c2 * b[j]);
  return {mean, s.posterior_variance()[i], s.posterior_log_variance_clipped()[i]};
}

double learned_log_variance(const DiscreteSchedule& s, int i, double raw) {
  const double min_log = s.posterior_log_variance_clipped()[i], max_log = std::log(s.betas()[i]);
  const double v = 0.5 * (raw + 1.0);
  return v * max_log + (1.0 - v) * min_log;
}

Tensor learned_log_variance(const DiscreteSchedule& s, int i, const Tensor& raw) {
  DF_CHECK(i >= 0 && i < s.T(), "learned_log_variance: step ", i, " of ", s.T());
  Tensor out = Tensor::empty(raw.shape());
  const float* r = raw.data<float>();
  float* o = out.data<float>();
  for (int64_t j = 0; j < raw.numel(); ++j) o[j] = static_cast<float>(learned_log_variance(s, i, r[j]));
  return out;
}

ModelMeanVariance p_mean_variance(const DiscreteSchedule& s, int i, const Tensor& xt, const Tensor& model_out,
                                  Prediction pred, VarianceKind var, bool clip_x0) {
  DF_CHECK(i >= 0 && i < s.T(), "p_mean_variance: step ", i, " of ", s.T());
  const int64_t B = batch_of(xt);
  Tensor out = model_out, raw_var;
  if (var == VarianceKind::learned) std::tie(out, raw_var) = split_learned_variance(model_out);
  check_same_shape(xt, out, "p_mean_variance");
  const double ab = s.alphas_cumprod()[i];
  std::vector<double> alpha(B, std::sqrt(ab)), sigma(B, std::sqrt(1.0 - ab));
  Tensor x0 = convert_prediction(pred, Prediction::x0, xt, out, alpha, sigma);
  if (clip_x0) {
    float* p = x0.data<float>();
    for (int64_t j = 0; j < x0.numel(); ++j) p[j] = std::clamp(p[j], -1.f, 1.f);
  }
  ModelMeanVariance r;
  r.mean = q_posterior(s, i, x0, xt).mean;
  r.x0 = x0;
  if (var == VarianceKind::learned) {
    r.log_var = learned_log_variance(s, i, raw_var);
  } else {
    // Fixed "large" variance: beta_t, but beta_tilde_1 at the first step so the decoder is not
    // wider than the posterior there (improved-DDPM ModelVarType.FIXED_LARGE).
    double lv = s.posterior_log_variance_clipped()[i];
    if (var == VarianceKind::beta && i > 0) lv = std::log(s.betas()[i]);
    r.log_var = Tensor::full(xt.shape(), lv);
  }
  return r;
}

Tensor vlb_term(const DiscreteSchedule& s, int i, const Tensor& x0, const Tensor& xt, const Tensor& model_out,
                Prediction pred, VarianceKind var, bool clip_x0) {
  ModelMeanVariance p = p_mean_variance(s, i, xt, model_out, pred, var, clip_x0);
  const int64_t B = batch_of(x0), N = per_sample(x0);
  Tensor out = Tensor::empty({B});
  if (i == 0) {
    // L_0 = -log p(x0 | x_1): the discretized Gaussian decoder with the model's mean and std.
    const float *x = x0.data<float>(), *m = p.mean.data<float>(), *lv = p.log_var.data<float>();
    for (int64_t b = 0; b < B; ++b) {
      double acc = 0;
      for (int64_t j = b * N; j < (b + 1) * N; ++j) acc -= discretized_gaussian_log_likelihood(x[j], m[j], 0.5 * lv[j]);
      out.data<float>()[b] = static_cast<float>(acc);
    }
    return out;
  }
  Posterior q = q_posterior(s, i, x0, xt);
  Tensor qlv = Tensor::full(x0.shape(), q.log_variance_clipped);
  return normal_kl_per_sample(q.mean, qlv, p.mean, p.log_var);
}

double bits_per_dim(double nats, int64_t dims) { return nats / (static_cast<double>(dims) * std::numbers::ln2); }

// ---- continuous time -------------------------------------------------------------------------

Tensor vdm_diffusion_loss(const Tensor& eps, const Tensor& eps_hat, const std::vector<double>& dgamma) {
  const int64_t B = batch_of(eps);
  check_same_shape(eps, eps_hat, "vdm_diffusion_loss");
  DF_CHECK(static_cast<int64_t>(dgamma.size()) == B, "vdm_diffusion_loss: need one gamma' per sample");
  Tensor m = mse_per_sample(eps, eps_hat);
  const int64_t N = per_sample(eps);
  float* p = m.data<float>();
  for (int64_t b = 0; b < B; ++b) p[b] = static_cast<float>(0.5 * dgamma[b] * static_cast<double>(p[b]) * N);
  return m;
}

std::vector<double> low_discrepancy_times(int batch, uint64_t seed, uint64_t offset) {
  DF_CHECK(batch >= 1, "low_discrepancy_times: batch ", batch);
  const double u = philox_uniform(seed, offset, 0);
  std::vector<double> t(batch);
  for (int i = 0; i < batch; ++i) t[i] = std::fmod(u + static_cast<double>(i) / batch, 1.0);
  return t;
}

// ---- importance sampling ---------------------------------------------------------------------

LossSecondMomentResampler::LossSecondMomentResampler(int T, int history, double uniform_prob)
    : T_(T), history_(history), uniform_prob_(uniform_prob), hist_(static_cast<size_t>(T) * history, 0.0), count_(T, 0) {
  DF_CHECK(T >= 1 && history >= 1 && uniform_prob >= 0 && uniform_prob <= 1, "LossSecondMomentResampler: bad arguments");
}

bool LossSecondMomentResampler::warmed_up() const {
  return std::all_of(count_.begin(), count_.end(), [&](int c) { return c == history_; });
}

std::vector<double> LossSecondMomentResampler::weights() const {
  std::vector<double> w(T_, 1.0 / T_);
  if (!warmed_up()) return w;
  double sum = 0;
  for (int t = 0; t < T_; ++t) {
    double m2 = 0;
    for (int k = 0; k < history_; ++k) m2 += hist_[t * history_ + k] * hist_[t * history_ + k];
    w[t] = std::sqrt(m2 / history_);
    sum += w[t];
  }
  for (double& x : w) x = x / sum * (1.0 - uniform_prob_) + uniform_prob_ / T_;
  return w;
}

LossSecondMomentResampler::Draw LossSecondMomentResampler::sample(int batch, uint64_t seed, uint64_t offset) const {
  const std::vector<double> w = weights();
  std::vector<double> cdf(T_);
  double acc = 0;
  for (int t = 0; t < T_; ++t) cdf[t] = acc += w[t];
  Draw d;
  for (int b = 0; b < batch; ++b) {
    const double u = philox_uniform(seed, offset, static_cast<uint64_t>(b)) * acc;
    int t = static_cast<int>(std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
    t = std::min(t, T_ - 1);
    d.t.push_back(t);
    d.weights.push_back(1.0 / (T_ * w[t]));
  }
  return d;
}

void LossSecondMomentResampler::update(const std::vector<int>& t, const std::vector<double>& losses) {
  DF_CHECK(t.size() == losses.size(), "LossSecondMomentResampler::update: sizes differ");
  for (size_t i = 0; i < t.size(); ++i) {
    DF_CHECK(t[i] >= 0 && t[i] < T_, "LossSecondMomentResampler::update: t = ", t[i]);
    double* h = &hist_[static_cast<size_t>(t[i]) * history_];
    if (count_[t[i]] == history_) {
      // Full: drop the oldest value.
      std::copy(h + 1, h + history_, h);
      h[history_ - 1] = losses[i];
    } else {
      h[count_[t[i]]++] = losses[i];
    }
  }
}

LossSecondMomentResampler::State LossSecondMomentResampler::state() const {
  return State{hist_, std::vector<int64_t>(count_.begin(), count_.end())};
}

void LossSecondMomentResampler::set_state(const State& s) {
  DF_CHECK(s.losses.size() == hist_.size() && s.counts.size() == count_.size(), "loss history of ", s.counts.size(),
           " steps x ", s.counts.empty() ? 0 : s.losses.size() / s.counts.size(), " values, expected ", T_, " x ",
           history_);
  for (int64_t c : s.counts) DF_CHECK(c >= 0 && c <= history_, "loss history: a count of ", c, " outside [0, ", history_, "]");
  for (double v : s.losses) DF_CHECK(std::isfinite(v), "loss history: a loss of ", v);
  hist_ = s.losses;
  count_.assign(s.counts.begin(), s.counts.end());
}

std::vector<int> uniform_timesteps(int T, int batch, uint64_t seed, uint64_t offset) {
  std::vector<int> t(batch);
  for (int b = 0; b < batch; ++b)
    t[b] = std::min(T - 1, static_cast<int>(philox_uniform(seed, offset, static_cast<uint64_t>(b)) * T));
  return t;
}

}  // namespace diffuse::diffusion
