// models/diffusion/hybrid_loss.cpp: see hybrid_loss.h for the loss, its units and its sources.
#include "models/diffusion/hybrid_loss.h"

#include <cmath>
#include <cstring>
#include <numbers>

#include "autograd/elementwise.h"
#include "autograd/linalg.h"
#include "core/check.h"
#include "kernels/elementwise.h"
#include "kernels/learned_variance_vlb.h"

namespace diffuse::diffusion {

ag::Var learned_variance_vlb(const DiscreteSchedule& s, const std::vector<int>& steps, const Tensor& x0,
                             const Tensor& xt, const Tensor& pred, const ag::Var& raw, Prediction p) {
  const Tensor& r = raw.value();
  DF_CHECK(r.defined() && r.dim() >= 2 && r.size(0) == static_cast<int64_t>(steps.size()),
           "learned_variance_vlb: raw variance ", r.defined() ? r.str() : std::string("undefined"), " for ",
           steps.size(), " steps (expected (B, ..., C) with one step per sample)");
  DF_CHECK(r.dtype() == DType::f32 || r.dtype() == DType::f64 || r.dtype() == DType::bf16,
           "learned_variance_vlb: raw variance of dtype ", r.str());
  check_same_shape(x0, r, "learned_variance_vlb");
  check_same_shape(xt, r, "learned_variance_vlb");
  check_same_shape(pred, r, "learned_variance_vlb");
  const int64_t B = r.size(0), N = r.numel() / B;
  // The constants (data, latent, the detached prediction) in f32, as p_mean_variance and
  // q_posterior take them; the variance in double, so a gradcheck's 1e-6 steps are resolved.
  const Tensor x = x0.to(Device::cpu()).to(DType::f32), z = xt.to(Device::cpu()).to(DType::f32),
               e = pred.to(Device::cpu()).to(DType::f32), rr = r.to(Device::cpu()).to(DType::f64);
  const double* rp = rr.data<double>();
  const double to_bpd = 1.0 / (static_cast<double>(N) * std::numbers::ln2);
  Tensor value = Tensor::empty({B}, DType::f64);
  // Forward returns what backward needs: the per-element derivative of each sample's term.
  Tensor dvalue = Tensor::empty(r.shape(), DType::f64);
  double* vp = value.data<double>();
  double* dp = dvalue.data<double>();
  for (int64_t b = 0; b < B; ++b) {
    const int i = steps[b];
    DF_CHECK(i >= 0 && i < s.T(), "learned_variance_vlb: step ", i, " of ", s.T());
    const Tensor xb = x.slice(b, b + 1), zb = z.slice(b, b + 1);
    // The mean of p(x_{t-1} | x_t) from the prediction alone; the variance kind does not enter it.
    const Tensor mean = p_mean_variance(s, i, zb, e.slice(b, b + 1), p, VarianceKind::beta_tilde).mean;
    const float* mu = mean.data<float>();
    const double dlv_dr = 0.5 * (std::log(s.betas()[i]) - s.posterior_log_variance_clipped()[i]);
    const double* rb = rp + b * N;
    double* db = dp + b * N;
    double acc = 0;
    if (i == 0) {
      // L_0 = -log p(x0 | x_1), the discretized decoder with log_scale = log Sigma / 2.
      const float* xv = xb.data<float>();
      for (int64_t j = 0; j < N; ++j) {
        const double ls = 0.5 * learned_log_variance(s, 0, rb[j]);
        const kernels::DecoderTerm dec = kernels::discretized_gaussian_decoder(xv[j], mu[j], ls);
        acc -= dec.log_p;
        db[j] = -dec.dlog_p_dlog * 0.5 * dlv_dr * to_bpd;
      }
    } else {
      // L_t = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)).
      const Posterior q = q_posterior(s, i, xb, zb);
      const float* qm = q.mean.data<float>();
      for (int64_t j = 0; j < N; ++j) {
        const double lv = learned_log_variance(s, i, rb[j]);
        acc += normal_kl(qm[j], q.log_variance_clipped, mu[j], lv);
        db[j] = normal_kl_dlv2(qm[j], q.log_variance_clipped, mu[j], lv) * dlv_dr * to_bpd;
      }
    }
    vp[b] = acc * to_bpd;
  }
  const DType dtype = r.dtype();
  const Device device = r.device();
  return ag::record("learned_variance_vlb", value.to(dtype).to(device), {raw},
                    [dvalue, dtype, device, B, N](const Tensor& g) {
                      const Tensor gh = g.to(Device::cpu()).to(DType::f64);
                      Tensor dr = Tensor::empty(dvalue.shape(), DType::f64);
                      const double* gp = gh.data<double>();
                      const double* d = dvalue.data<double>();
                      double* o = dr.data<double>();
                      for (int64_t b = 0; b < B; ++b)
                        for (int64_t j = b * N; j < (b + 1) * N; ++j) o[j] = gp[b] * d[j];
                      return std::vector<Tensor>{dr.to(dtype).to(device)};
                    });
}

Tensor vlb_constants(const DiscreteSchedule& s, Device device) {
  // The columns of kernels/learned_variance_vlb.h, the values learned_variance_vlb's cpu form
  // takes from s (p_mean_variance's alpha and sigma, q_posterior's coefficients, learned_log_variance's
  // bounds), as the bits of doubles in an i64 tensor.
  constexpr int K = 6;
  const int T = s.T();
  std::vector<double> c(static_cast<size_t>(T) * K);
  for (int i = 0; i < T; ++i) {
    const double ab = s.alphas_cumprod()[i];
    double* r = c.data() + static_cast<size_t>(i) * K;
    r[0] = std::sqrt(ab);
    r[1] = std::sqrt(1.0 - ab);
    r[2] = s.posterior_mean_coef1()[i];
    r[3] = s.posterior_mean_coef2()[i];
    r[4] = std::log(s.betas()[i]);
    r[5] = s.posterior_log_variance_clipped()[i];
  }
  Tensor t = Tensor::empty({static_cast<int64_t>(c.size())}, DType::i64);
  std::memcpy(t.raw(), c.data(), c.size() * sizeof(double));
  return t.to(device);
}

#if defined(DIFFUSE_HAVE_CUDA)
ag::Var learned_variance_vlb(const Tensor& constants, const Tensor& steps, const Tensor& x0, const Tensor& xt,
                             const Tensor& pred, const ag::Var& raw) {
  DF_CHECK(raw.defined() && raw.value().device().is_cuda(), "learned_variance_vlb: the device form takes tensors "
           "on a GPU (the cpu form takes the schedule and a vector of steps)");
  auto [value, dvalue] = cuda::learned_variance_vlb_forward(constants, steps, x0, xt, pred, raw.value());
  const int64_t B = value.numel();
  const DType dtype = raw.value().dtype();
  Shape per_sample(std::vector<int64_t>(static_cast<size_t>(dvalue.dim()), 1));
  per_sample[0] = B;
  // Forward returned d value_b / d raw; the backward scales it by the incoming gradient of value_b.
  return ag::record("learned_variance_vlb", value, {raw}, [dvalue, per_sample, dtype](const Tensor& g) {
    return std::vector<Tensor>{kernels::mul(dvalue, g.to(DType::f32).reshape(per_sample)).to(dtype)};
  });
}
#else
// No tensor lives on a GPU in a build without CUDA: the device form can only refuse.
ag::Var learned_variance_vlb(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                             const ag::Var&) {
  DF_FAIL("learned_variance_vlb: the device form takes tensors on a GPU, and this build has no CUDA (the cpu form "
          "takes the schedule and a vector of steps)");
}
#endif

HybridLoss hybrid_terms(const ag::Var& eps_hat, const ag::Var& vlb, const Tensor& eps, const Tensor& weights,
                        const Tensor& importance, double lambda, int T) {
  const int64_t B = eps.size(0);
  DF_CHECK(vlb.defined() && vlb.value().numel() == B && weights.numel() == B &&
               (!importance.defined() || importance.numel() == B),
           "hybrid_terms: per-sample terms for a batch of ", B);
  HybridLoss h;
  if (!importance.defined()) {
    h.mse = ag::weighted_mse(eps_hat, ag::Var(eps), weights);
    h.vlb = ag::mean_all(vlb);
  } else {
    h.mse = ag::weighted_mse(eps_hat, ag::Var(eps), kernels::mul(importance, weights));
    h.vlb = ag::mean_all(ag::mul(vlb, ag::Var(importance.to(vlb.value().dtype()))));
  }
  h.loss = ag::add(h.mse, ag::mul_scalar(h.vlb, lambda * T));
  // Each sample's own loss w_b ||eps - eps_hat||^2 / N + lambda T L_{t_b}, in f32, without autograd.
  const Tensor d = kernels::sub(eps_hat.value().to(DType::f32), eps.to(DType::f32));
  std::vector<int> axes;
  for (int a = 1; a < d.dim(); ++a) axes.push_back(a);
  const Tensor mse_b = kernels::mean(kernels::mul(d, d), axes).reshape({B});
  h.per_sample_losses = kernels::add(kernels::mul(weights.to(DType::f32), mse_b),
                                     kernels::mul_scalar(vlb.value().to(DType::f32).reshape({B}), lambda * T));
  return h;
}

HybridLoss hybrid_loss(const DiscreteSchedule& s, const std::vector<int>& steps, const Tensor& x0, const Tensor& xt,
                       const Tensor& eps, const ag::Var& out, const Tensor& weights, double lambda,
                       const std::vector<double>& importance) {
  DF_CHECK(out.defined() && out.dim() == xt.dim() && out.size(-1) == 2 * xt.size(-1), "hybrid_loss: the network "
           "returned ", out.defined() ? out.value().str() : std::string("nothing"), " for x_t ", xt.str(),
           " (a learned variance needs 2C channels: eps, then the variance)");
  const int64_t C = xt.size(-1), B = xt.size(0);
  DF_CHECK(importance.empty() || static_cast<int64_t>(importance.size()) == B, "hybrid_loss: ", importance.size(),
           " importance weights for a batch of ", B);
  ag::Var eps_hat = ag::slice_last(out, 0, C);
  ag::Var raw = ag::slice_last(out, C, 2 * C);
  // eps_hat.value() is a plain tensor: the stop-gradient on the mean.
  ag::Var vlb = learned_variance_vlb(s, steps, x0, xt, eps_hat.value(), raw, Prediction::eps);
  Tensor u;
  if (!importance.empty()) {
    std::vector<float> uf(importance.begin(), importance.end());
    u = Tensor::from_vector(uf, {B}, weights.device());
  }
  HybridLoss h = hybrid_terms(eps_hat, vlb, eps, weights, u, lambda, s.T());
  for (float v : h.per_sample_losses.to(Device::cpu()).to_vector()) h.per_sample.push_back(v);
  return h;
}

}  // namespace diffuse::diffusion
