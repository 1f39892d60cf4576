// models/diffusion/schedule.h: noise schedules, all in terms of the log-SNR.
//
// Convention (Kingma et al. 2021, "Variational Diffusion Models", VDM, sec. 3.2 and eq. 4):
//   gamma(t) = -log SNR(t), increasing in t in [0, 1];
//   alpha_t^2 = sigmoid(-gamma(t)),  sigma_t^2 = sigmoid(gamma(t)),  alpha^2 + sigma^2 = 1;
//   q(z_t | x) = N(alpha_t x, sigma_t^2 I)   (variance preserving).
// DDPM's alpha_bar_t is alpha_t^2 and 1 - alpha_bar_t is sigma_t^2. The Karras (EDM) sigma is the
// noise-to-signal ratio sigma_t / alpha_t = exp(gamma / 2) of the same process scaled by 1/alpha.
//
// Discrete schedules (T steps, 0-based index i = 0..T-1, paper step i+1) sit on the continuous
// axis at t_i = (i + 1) / T, with t = 0 meaning clean data (alpha_bar = 1). A respaced schedule
// keeps the original times of the steps it uses, so a network always sees the same t.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/enum_names.h"

namespace diffuse::diffusion {

// The interface every sampler and loss uses. A learned schedule (VDM's monotone network) derives
// from it and evaluates its network in gamma() and its derivative in dgamma_dt().
class Schedule {
 public:
  virtual ~Schedule() = default;
  virtual double gamma(double t) const = 0;      // -log SNR(t)
  virtual double dgamma_dt(double t) const = 0;  // gamma'(t) >= 0, the weight of VDM's loss (eq. 17)
  virtual std::string name() const = 0;

  double alpha2(double t) const;  // sigmoid(-gamma): alpha_bar
  double sigma2(double t) const;  // sigmoid(gamma): 1 - alpha_bar
  double alpha(double t) const;
  double sigma(double t) const;
  double snr(double t) const;     // exp(-gamma)
  // The t with gamma(t) = g, by bisection on [0, 1] (gamma is increasing); clamps outside.
  virtual double t_from_gamma(double g) const;
};

// DDPM-style schedule from a list of betas (Ho et al. 2020, sec. 2 and eq. 4-7).
class DiscreteSchedule : public Schedule {
 public:
  explicit DiscreteSchedule(std::vector<double> betas, std::string name = "custom");
  // Linear betas (Ho et al. 2020, sec. 4): beta_start..beta_end, scaled by 1000/T as in
  // improved-DDPM's get_named_beta_schedule so that any T spans the same total noise.
  static DiscreteSchedule linear(int T = 1000, double beta_start = 1e-4, double beta_end = 0.02);
  // Linear betas from beta_start to beta_end as given, not scaled by T: beta_i = beta_start +
  // (beta_end - beta_start) i / (T - 1) (diffusers' "linear"). linear(T, b0, b1) is
  // linear_range(T, b0 1000/T, b1 1000/T) with each beta capped at 0.999.
  static DiscreteSchedule linear_range(int T, double beta_start, double beta_end);
  // Latent diffusion's "scaled_linear" (Rombach et al. 2022; diffusers' DDPMScheduler and
  // DDIMScheduler): beta_i = (sqrt(beta_start) + (sqrt(beta_end) - sqrt(beta_start)) i / (T - 1))^2.
  static DiscreteSchedule scaled_linear(int T, double beta_start, double beta_end);
  // Cosine (Nichol & Dhariwal 2021, eq. 17): alpha_bar(t) = f(t)/f(0), f = cos^2((t/T + s)/(1+s) pi/2),
  // beta_t = min(1 - alpha_bar_t / alpha_bar_{t-1}, max_beta).
  static DiscreteSchedule cosine(int T = 1000, double s = 0.008, double max_beta = 0.999);

  // T steps of a continuous schedule: alpha_bar_i = alpha^2((i + 1) / T) (VDM sec. 4: the
  // discrete-time model whose bound decreases towards the continuous one as T grows).
  static DiscreteSchedule from_continuous(const Schedule& s, int T);

  int T() const { return static_cast<int>(betas_.size()); }
  const std::vector<double>& betas() const { return betas_; }
  const std::vector<double>& alphas_cumprod() const { return abar_; }
  const std::vector<double>& alphas_cumprod_prev() const { return abar_prev_; }  // [0] = 1
  // beta_tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) (Ho et al. eq. 7).
  const std::vector<double>& posterior_variance() const { return post_var_; }
  // log beta_tilde with [0] replaced by [1] (beta_tilde_0 = 0), as improved-DDPM.
  const std::vector<double>& posterior_log_variance_clipped() const { return post_logvar_clipped_; }
  // mu_tilde(x_t, x0) = coef1 * x0 + coef2 * x_t (Ho et al. eq. 7).
  const std::vector<double>& posterior_mean_coef1() const { return post_c1_; }
  const std::vector<double>& posterior_mean_coef2() const { return post_c2_; }
  // Continuous time of step i (0-based): (i+1)/T, or the original step's time after respacing.
  double t_of(int i) const { return times_[i]; }
  const std::vector<double>& times() const { return times_; }
  // The original (un-respaced) index of step i.
  int original_index(int i) const { return map_[i]; }
  double gamma_at(int i) const { return gammas_[i]; }  // -log(alpha_bar_i / (1 - alpha_bar_i))

  // gamma is exact at the step times, linear in between, linearly extrapolated on (0, t_0), and
  // -inf at t <= 0 (alpha_bar = 1: clean data).
  double gamma(double t) const override;
  double dgamma_dt(double t) const override;
  std::string name() const override { return name_; }

  // The schedule restricted to the original steps `use` (increasing): betas from the ratios of
  // alpha_bar (improved-DDPM SpacedDiffusion: beta'_k = 1 - alpha_bar[use_k] / alpha_bar[use_{k-1}]).
  DiscreteSchedule respace(const std::vector<int>& use) const;

 private:
  // Everything else from abar_; betas_ too (from its ratios) when they were not given.
  void finish(bool betas_from_abar);
  std::vector<double> betas_, abar_, abar_prev_, post_var_, post_logvar_clipped_, post_c1_, post_c2_;
  std::vector<double> times_, gammas_;
  std::vector<int> map_;
  std::string name_;
};

// Which original steps a sampler with `steps` steps visits (sorted increasing, unique).
enum class Spacing {
  linspace,  // round(linspace(0, T-1, steps))
  leading,   // arange(0, steps) * (T / steps)   (DDIM paper, "uniform"; Stable Diffusion)
  trailing,  // round(arange(T, 0, -T/steps)) - 1 (Lin et al. 2024, "Common diffusion noise schedules ... are flawed", Table 2)
  logsnr,    // uniform in log-SNR between the ends, nearest steps (Lu et al. 2022, DPM-Solver, sec. 3.4):
             // a good grid for multistep solvers; needs the schedule, so only the overload below.
  karras,    // EDM's rho = 7 ramp in sigma (Karras et al. 2022, eq. 5; karras_sigmas below): continuous
             // times, between a discrete schedule's steps, so only the samplers' sampling_times.
};
inline constexpr EnumName<Spacing> kSpacingNames[] = {
    {Spacing::linspace, "linspace"}, {Spacing::leading, "leading"}, {Spacing::trailing, "trailing"},
    {Spacing::logsnr, "logsnr"}, {Spacing::karras, "karras"}};
constexpr std::span<const EnumName<Spacing>> enum_table(Spacing) { return kSpacingNames; }
// The one parser of spacing names (the CLI's --spacing, and the C API's
// diffuse_sampler_set_spacing): "unknown spacing 'x' (expected linspace, leading, trailing or logsnr)".
inline Spacing parse_spacing(std::string_view name) { return parse_enum<Spacing>(name, "spacing"); }
std::vector<int> spaced_timesteps(int T, int steps, Spacing spacing);
// Any spacing, logsnr included. logsnr may return fewer steps when two targets share a step.
std::vector<int> spaced_timesteps(const DiscreteSchedule& s, int steps, Spacing spacing);
// improved-DDPM `space_timesteps`: "10,15,20" splits [0, T) into equal sections and takes that
// many evenly strided steps from each; "ddim50" takes the DDIM integer stride.
std::vector<int> section_timesteps(int T, const std::string& section_counts);

// VDM's fixed linear log-SNR schedule: gamma(t) = gamma_min + (gamma_max - gamma_min) t.
class LinearLogSNR : public Schedule {
 public:
  explicit LinearLogSNR(double gamma_min = -13.3, double gamma_max = 5.0) : gmin_(gamma_min), gmax_(gamma_max) {}
  double gamma(double t) const override { return gmin_ + (gmax_ - gmin_) * t; }
  double dgamma_dt(double) const override { return gmax_ - gmin_; }
  double t_from_gamma(double g) const override;
  std::string name() const override { return "linear_logsnr"; }
  double gamma_min() const { return gmin_; }
  double gamma_max() const { return gmax_; }

 private:
  double gmin_, gmax_;
};

// Karras et al. 2022 (EDM) sigma ramp as a continuous schedule:
// sigma(t) = (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho (eq. 5, with
// t = 1 - i/(N-1)), gamma(t) = 2 log sigma(t).
class KarrasSchedule : public Schedule {
 public:
  KarrasSchedule(double sigma_min = 0.002, double sigma_max = 80.0, double rho = 7.0)
      : smin_(sigma_min), smax_(sigma_max), rho_(rho) {}
  double sigma_ve(double t) const;  // the EDM sigma
  double gamma(double t) const override;
  double dgamma_dt(double t) const override;
  std::string name() const override { return "karras"; }

 private:
  double smin_, smax_, rho_;
};

// The N EDM sigmas sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min, then a trailing 0
// (Karras et al. 2022, eq. 5): N + 1 values.
std::vector<double> karras_sigmas(int n, double sigma_min, double sigma_max, double rho = 7.0);

double sigmoid(double x);

}  // namespace diffuse::diffusion
