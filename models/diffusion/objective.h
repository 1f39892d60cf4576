// models/diffusion/objective.h: what a network predicts, and the losses and likelihood terms.
//
// Forward values on cpu f32 Tensors (math in double where it accumulates). Per-sample results are
// (B) f32 Tensors of nats summed over the sample's elements unless the name says bits per dim.
// A per-sample noise level is a std::vector<double> of length B (alpha_t, sigma_t of schedule.h).
//
// Shapes: B batch, N elements per sample; every tensor argument is (B, ...) with the same shape
// unless stated.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "models/diffusion/schedule.h"

namespace diffuse::diffusion {

// What the network's (first C) output channels mean. z = alpha x0 + sigma eps and
// v = alpha eps - sigma x0 (Salimans & Ho 2022, "Progressive distillation", sec. 4 and app. D).
enum class Prediction { eps, x0, v };
// The reverse-process variance of DDPM ancestral sampling and of the VLB's model p(x_{t-1}|x_t):
// beta_t (upper bound), beta_tilde_t (lower bound; Ho et al. 2020 sec. 3.2), or learned
// (improved DDPM eq. 15; the network returns 2C channels).
enum class VarianceKind { beta, beta_tilde, learned };
// diffusers' variance_type names them fixed_large, fixed_small and learned_range.
inline constexpr EnumName<VarianceKind> kVarianceNames[] = {
    {VarianceKind::beta_tilde, "beta_tilde"}, {VarianceKind::beta, "beta"}, {VarianceKind::learned, "learned"}};
constexpr std::span<const EnumName<VarianceKind>> enum_table(VarianceKind) { return kVarianceNames; }

const char* to_string(Prediction p);

// z_t = alpha x0 + sigma eps, per sample (Ho et al. eq. 4 with alpha^2 = alpha_bar).
Tensor q_sample(const Tensor& x0, const Tensor& eps, const std::vector<double>& alpha,
                const std::vector<double>& sigma);
// Converts a prediction between eps, x0 and v given z and its noise level (alpha^2 + sigma^2 = 1).
Tensor convert_prediction(Prediction from, Prediction to, const Tensor& z, const Tensor& pred,
                          const std::vector<double>& alpha, const std::vector<double>& sigma);
// The regression target of a prediction type: eps, x0 or alpha eps - sigma x0.
Tensor prediction_target(Prediction p, const Tensor& x0, const Tensor& eps, const std::vector<double>& alpha,
                         const std::vector<double>& sigma);

// Splits a learned-variance output (B, ..., 2C) into the prediction (B, ..., C) and the raw
// variance channels (B, ..., C).
std::pair<Tensor, Tensor> split_learned_variance(const Tensor& out);

// ---- simple losses ----------------------------------------------------------------------------

// Mean over each sample's elements of (a - b)^2: L_simple per sample (Ho et al. eq. 14).
Tensor mse_per_sample(const Tensor& a, const Tensor& b);
// L_simple averaged over the batch, optionally weighted per sample.
double l_simple(const Tensor& target, const Tensor& pred, const std::vector<double>& weights = {});
// Min-SNR-gamma weight (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting",
// eq. 8 and sec. 3.4): the x0-MSE weight min(SNR, gamma) re-expressed for the loss actually
// computed: eps: min(SNR, g)/SNR, x0: min(SNR, g), v: min(SNR, g)/(SNR + 1).
double min_snr_weight(Prediction p, double snr, double gamma = 5.0);

// ---- Gaussian terms of the VLB (Ho et al. 2020 eq. 5; Nichol & Dhariwal 2021 sec. 2) ---------

// KL(N(m1, e^lv1) || N(m2, e^lv2)) elementwise, in nats (improved-DDPM `normal_kl`).
double normal_kl(double m1, double lv1, double m2, double lv2);
// Its derivative in the second log variance: 0.5 (1 - e^{lv1 - lv2} - (m1 - m2)^2 e^{-lv2}).
double normal_kl_dlv2(double m1, double lv1, double m2, double lv2);
// Elementwise with tensors of one shape, summed per sample: (B).
Tensor normal_kl_per_sample(const Tensor& m1, const Tensor& lv1, const Tensor& m2, const Tensor& lv2);
// log of the probability mass of bin x under N(mean, e^{2 log_scale}), data on 256 levels in
// [-1, 1]: bins of width 2/255 centred on the levels, the end bins open to -inf / +inf
// (improved-DDPM `discretized_gaussian_log_likelihood`; Ho et al. eq. 13). Elementwise. With its
// derivative in log_scale: kernels::discretized_gaussian_decoder (kernels/learned_variance_vlb.h).
double discretized_gaussian_log_likelihood(double x, double mean, double log_scale);
Tensor discretized_gaussian_log_likelihood(const Tensor& x, const Tensor& mean, const Tensor& log_scale);

// Prior term L_T = KL(q(z_1 | x) || N(0, I)) per sample, nats; z_1 at t = 1 of any schedule.
Tensor prior_kl(const Schedule& s, const Tensor& x0);

struct Posterior {
  Tensor mean;     // coef1 x0 + coef2 x_t
  double variance;  // beta_tilde_t
  double log_variance_clipped;
};
// q(x_{t-1} | x_t, x0) at step i (0-based) (Ho et al. eq. 6-7).
Posterior q_posterior(const DiscreteSchedule& s, int i, const Tensor& x0, const Tensor& xt);

struct ModelMeanVariance {
  Tensor mean;     // (B, ..., C)
  Tensor log_var;  // (B, ..., C), elementwise so a learned variance fits
  Tensor x0;       // the (clipped) data prediction behind the mean
};
// p(x_{t-1} | x_t) at step i from the model output (improved-DDPM `p_mean_variance`).
ModelMeanVariance p_mean_variance(const DiscreteSchedule& s, int i, const Tensor& xt, const Tensor& model_out,
                                  Prediction pred, VarianceKind var, bool clip_x0 = false);
// log Sigma = v log beta_t + (1 - v) log beta_tilde_t (Nichol & Dhariwal eq. 15), with
// v = (r + 1)/2 from the raw output r in [-1, 1] as in their code.
Tensor learned_log_variance(const DiscreteSchedule& s, int i, const Tensor& raw);
// The same for one element; d/d raw is (log beta_t - log beta_tilde_t) / 2.
double learned_log_variance(const DiscreteSchedule& s, int i, double raw);

// One VLB term per sample, nats: i = 0 gives L_0 = -log p(x0 | x_1) (the discretized decoder),
// i > 0 gives L_i = KL(q(x_{i-1} | x_i, x0) || p(x_{i-1} | x_i)) (improved-DDPM `_vb_terms_bpd`).
Tensor vlb_term(const DiscreteSchedule& s, int i, const Tensor& x0, const Tensor& xt, const Tensor& model_out,
                Prediction pred, VarianceKind var, bool clip_x0 = false);

// nats summed over `dims` elements -> bits per dim.
double bits_per_dim(double nats, int64_t dims);

// ---- continuous time (VDM, Kingma et al. 2021) -------------------------------------------------

// L_inf per sample = 0.5 gamma'(t) ||eps - eps_hat||^2 (VDM eq. 17, with the MC estimate over t).
Tensor vdm_diffusion_loss(const Tensor& eps, const Tensor& eps_hat, const std::vector<double>& dgamma);
// t_i = (u + i/B) mod 1 with one u ~ U[0, 1) from Philox (VDM app. I.1, low-discrepancy sampler).
std::vector<double> low_discrepancy_times(int batch, uint64_t seed, uint64_t offset = 0);

// ---- importance sampling of discrete t (Nichol & Dhariwal 2021, eq. 18 and sec. 3.3) ---------

// p_t proportional to sqrt(E[L_t^2]) over the last `history` values per t; uniform until every t
// has `history` values; mixed with `uniform_prob` of the uniform distribution (improved-DDPM
// `LossSecondMomentResampler`).
class LossSecondMomentResampler {
 public:
  explicit LossSecondMomentResampler(int T, int history = 10, double uniform_prob = 1e-3);
  std::vector<double> weights() const;  // the sampling distribution p_t (sums to 1)
  struct Draw {
    std::vector<int> t;              // indices in [0, T)
    std::vector<double> weights;     // 1 / (T p_t): makes the weighted loss unbiased for the uniform mean
  };
  Draw sample(int batch, uint64_t seed, uint64_t offset = 0) const;
  void update(const std::vector<int>& t, const std::vector<double>& losses);
  bool warmed_up() const;
  int T() const { return T_; }
  int history() const { return history_; }
  // What a checkpoint keeps, so that a resumed run draws what the uninterrupted run would have:
  // each t's last `history` losses, oldest first (T x history; unfilled slots 0), and how many it
  // has (T). set_state refuses a state of other sizes, counts outside [0, history], or a loss that
  // is not finite.
  struct State {
    std::vector<double> losses;
    std::vector<int64_t> counts;
  };
  State state() const;
  void set_state(const State& s);

 private:
  int T_, history_;
  double uniform_prob_;
  std::vector<double> hist_;  // T x history
  std::vector<int> count_;
};

// Draws B step indices uniformly (weights 1).
std::vector<int> uniform_timesteps(int T, int batch, uint64_t seed, uint64_t offset = 0);

}  // namespace diffuse::diffusion
