// models/diffusion/schedule.cpp: see schedule.h for conventions and sources.
#include "models/diffusion/schedule.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <set>
#include <sstream>

#include "core/check.h"

namespace diffuse::diffusion {

double sigmoid(double x) {
  // Two branches so neither exp overflows.
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

double Schedule::alpha2(double t) const { return sigmoid(-gamma(t)); }
double Schedule::sigma2(double t) const { return sigmoid(gamma(t)); }
double Schedule::alpha(double t) const { return std::sqrt(alpha2(t)); }
double Schedule::sigma(double t) const { return std::sqrt(sigma2(t)); }
double Schedule::snr(double t) const { return std::exp(-gamma(t)); }

double Schedule::t_from_gamma(double g) const {
  double lo = 0, hi = 1;
  if (g <= gamma(lo)) return lo;
  if (g >= gamma(hi)) return hi;
  for (int it = 0; it < 100 && hi - lo > 1e-15; ++it) {
    const double mid = 0.5 * (lo + hi);
    (gamma(mid) < g ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

// ---- discrete --------------------------------------------------------------------------------

DiscreteSchedule::DiscreteSchedule(std::vector<double> betas, std::string name)
    : betas_(std::move(betas)), name_(std::move(name)) {
  DF_CHECK(!betas_.empty(), "schedule: no betas");
  for (double b : betas_) DF_CHECK(b > 0 && b <= 1, "schedule: beta out of (0, 1]: ", b);
  const int n = static_cast<int>(betas_.size());
  times_.resize(n);
  map_.resize(n);
  abar_.resize(n);
  double a = 1;
  for (int i = 0; i < n; ++i) {
    times_[i] = static_cast<double>(i + 1) / n;
    map_[i] = i;
    abar_[i] = a *= 1.0 - betas_[i];
  }
  finish(false);
}

void DiscreteSchedule::finish(bool betas_from_abar) {
  const int n = static_cast<int>(abar_.size());
  betas_.resize(n);
  abar_prev_.resize(n);
  post_var_.resize(n);
  post_logvar_clipped_.resize(n);
  post_c1_.resize(n);
  post_c2_.resize(n);
  gammas_.resize(n);
  for (int i = 0; i < n; ++i) {
    abar_prev_[i] = i == 0 ? 1.0 : abar_[i - 1];
    if (betas_from_abar) betas_[i] = 1.0 - abar_[i] / abar_prev_[i];
  }
  for (int i = 0; i < n; ++i) {
    const double b = betas_[i], ab = abar_[i], abp = abar_prev_[i];
    // Ho et al. 2020, eq. 7.
    post_var_[i] = b * (1.0 - abp) / (1.0 - ab);
    post_c1_[i] = b * std::sqrt(abp) / (1.0 - ab);
    post_c2_[i] = (1.0 - abp) * std::sqrt(abar_[i] / abp) / (1.0 - ab);
    // -log SNR = log(1 - alpha_bar) - log(alpha_bar).
    gammas_[i] = std::log1p(-ab) - std::log(ab);
  }
  // beta_tilde_0 = 0: improved-DDPM clips the log by using beta_tilde_1 at step 0.
  for (int i = 0; i < n; ++i)
    post_logvar_clipped_[i] = std::log(n > 1 && i == 0 ? post_var_[1] : post_var_[i]);
  if (n == 1) post_logvar_clipped_[0] = std::log(betas_[0]);
}

namespace {
// linspace(first, last, T), the one formula of the linear schedules.
std::vector<double> linspace(int T, double first, double last) {
  std::vector<double> v(T);
  for (int i = 0; i < T; ++i) v[i] = T == 1 ? first : first + (last - first) * i / (T - 1);
  return v;
}
}  // namespace

DiscreteSchedule DiscreteSchedule::linear(int T, double beta_start, double beta_end) {
  DF_CHECK(T >= 1, "linear schedule: T = ", T);
  const double scale = 1000.0 / T;
  std::vector<double> b = linspace(T, scale * beta_start, scale * beta_end);
  for (double& x : b) x = std::min(x, 0.999);
  return DiscreteSchedule(std::move(b), "linear");
}

DiscreteSchedule DiscreteSchedule::linear_range(int T, double beta_start, double beta_end) {
  DF_CHECK(T >= 1, "linear schedule: T = ", T);
  return DiscreteSchedule(linspace(T, beta_start, beta_end), "linear");
}

DiscreteSchedule DiscreteSchedule::scaled_linear(int T, double beta_start, double beta_end) {
  DF_CHECK(T >= 1, "scaled_linear schedule: T = ", T);
  DF_CHECK(beta_start > 0 && beta_end > 0, "scaled_linear schedule: beta_start ", beta_start, " and beta_end ",
           beta_end, " must be positive");
  std::vector<double> b = linspace(T, std::sqrt(beta_start), std::sqrt(beta_end));
  for (double& x : b) x *= x;
  return DiscreteSchedule(std::move(b), "scaled_linear");
}

DiscreteSchedule DiscreteSchedule::cosine(int T, double s, double max_beta) {
  DF_CHECK(T >= 1, "cosine schedule: T = ", T);
  auto f = [&](double t) {
    const double c = std::cos((t + s) / (1.0 + s) * std::numbers::pi / 2);
    return c * c;
  };
  std::vector<double> b(T);
  for (int i = 0; i < T; ++i) b[i] = std::min(1.0 - f(static_cast<double>(i + 1) / T) / f(static_cast<double>(i) / T), max_beta);
  return DiscreteSchedule(std::move(b), "cosine");
}

double DiscreteSchedule::gamma(double t) const {
  if (t <= 0) return -std::numeric_limits<double>::infinity();
  const int n = T();
  if (n == 1) return gammas_[0];
  // The segment [times_[k], times_[k+1]] that holds t (first or last for extrapolation).
  auto it = std::upper_bound(times_.begin(), times_.end(), t);
  int k = static_cast<int>(it - times_.begin()) - 1;
  k = std::clamp(k, 0, n - 2);
  const double f = (t - times_[k]) / (times_[k + 1] - times_[k]);
  if (t >= times_[n - 1]) return gammas_[n - 1];
  return gammas_[k] + f * (gammas_[k + 1] - gammas_[k]);
}

double DiscreteSchedule::dgamma_dt(double t) const {
  const int n = T();
  if (n == 1) return 0;
  auto it = std::upper_bound(times_.begin(), times_.end(), t);
  int k = std::clamp(static_cast<int>(it - times_.begin()) - 1, 0, n - 2);
  return (gammas_[k + 1] - gammas_[k]) / (times_[k + 1] - times_[k]);
}

DiscreteSchedule DiscreteSchedule::from_continuous(const Schedule& s, int T) {
  DF_CHECK(T >= 1, "from_continuous: T = ", T);
  std::vector<double> b(T);
  double last = 1;
  for (int i = 0; i < T; ++i) {
    const double a = s.alpha2(static_cast<double>(i + 1) / T);
    b[i] = 1.0 - a / last;
    last = a;
  }
  DiscreteSchedule r(std::move(b), s.name() + "_discrete");
  for (int i = 0; i < T; ++i) r.abar_[i] = s.alpha2(static_cast<double>(i + 1) / T);
  r.finish(true);
  return r;
}

DiscreteSchedule DiscreteSchedule::respace(const std::vector<int>& use) const {
  DF_CHECK(!use.empty(), "respace: no steps");
  std::vector<double> b;
  double last = 1;
  for (size_t k = 0; k < use.size(); ++k) {
    DF_CHECK(use[k] >= 0 && use[k] < T(), "respace: step ", use[k], " outside [0, ", T(), ")");
    DF_CHECK(k == 0 || use[k] > use[k - 1], "respace: steps must increase");
    b.push_back(1.0 - abar_[use[k]] / last);
    last = abar_[use[k]];
  }
  DiscreteSchedule r(std::move(b), name_ + "_respaced");
  for (size_t k = 0; k < use.size(); ++k) {
    r.times_[k] = times_[use[k]];
    r.map_[k] = map_[use[k]];
    r.abar_[k] = abar_[use[k]];  // exact, not the product of the rounded ratios
  }
  r.finish(true);
  return r;
}

std::vector<int> spaced_timesteps(int T, int steps, Spacing spacing) {
  DF_CHECK(steps >= 1 && steps <= T, "spaced_timesteps: ", steps, " steps of ", T);
  std::set<int> s;
  for (int k = 0; k < steps; ++k) {
    switch (spacing) {
      case Spacing::linspace:
        s.insert(steps == 1 ? T - 1 : static_cast<int>(std::nearbyint(static_cast<double>(T - 1) * k / (steps - 1))));
        break;
      case Spacing::leading: s.insert(k * (T / steps)); break;
      case Spacing::trailing:
        s.insert(static_cast<int>(std::nearbyint(T - k * (static_cast<double>(T) / steps))) - 1);
        break;
      case Spacing::logsnr: DF_FAIL("spaced_timesteps: logsnr spacing needs the schedule");
      case Spacing::karras: DF_FAIL("spaced_timesteps: karras spacing gives continuous times (sampling_times)");
    }
  }
  return {s.begin(), s.end()};
}

std::vector<int> spaced_timesteps(const DiscreteSchedule& s, int steps, Spacing spacing) {
  if (spacing != Spacing::logsnr) return spaced_timesteps(s.T(), steps, spacing);
  const int T = s.T();
  DF_CHECK(steps >= 1 && steps <= T, "spaced_timesteps: ", steps, " steps of ", T);
  const double g0 = s.gamma_at(0), g1 = s.gamma_at(T - 1);
  std::set<int> out;
  for (int k = 0; k < steps; ++k) {
    const double g = steps == 1 ? g1 : g1 + (g0 - g1) * k / (steps - 1);
    // gamma increases with the step: the nearest of the two neighbours of the insertion point.
    int lo = 0, hi = T - 1;
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      (s.gamma_at(mid) < g ? lo : hi) = mid;
    }
    out.insert(std::fabs(s.gamma_at(lo) - g) <= std::fabs(s.gamma_at(hi) - g) ? lo : hi);
  }
  return {out.begin(), out.end()};
}

std::vector<int> section_timesteps(int T, const std::string& spec) {
  if (spec.rfind("ddim", 0) == 0) {
    const int want = std::stoi(spec.substr(4));
    for (int stride = 1; stride < T; ++stride)
      if ((T + stride - 1) / stride == want) {
        std::vector<int> r;
        for (int i = 0; i < T; i += stride) r.push_back(i);
        return r;
      }
    DF_FAIL("section_timesteps: cannot make ", want, " steps of ", T, " with an integer stride");
  }
  std::vector<int> counts;
  std::stringstream ss(spec);
  for (std::string part; std::getline(ss, part, ',');) counts.push_back(std::stoi(part));
  DF_CHECK(!counts.empty(), "section_timesteps: empty spec");
  const int n = static_cast<int>(counts.size());
  const int size_per = T / n, extra = T % n;
  int start = 0;
  std::set<int> all;
  for (int i = 0; i < n; ++i) {
    const int size = size_per + (i < extra ? 1 : 0);
    DF_CHECK(size >= counts[i], "section_timesteps: cannot take ", counts[i], " steps from a section of ", size);
    const double stride = counts[i] <= 1 ? 1.0 : static_cast<double>(size - 1) / (counts[i] - 1);
    double cur = 0;
    // Python's round() is round-half-even, as nearbyint in the default rounding mode.
    for (int k = 0; k < counts[i]; ++k, cur += stride) all.insert(start + static_cast<int>(std::nearbyint(cur)));
    start += size;
  }
  return {all.begin(), all.end()};
}

// ---- continuous ------------------------------------------------------------------------------

double LinearLogSNR::t_from_gamma(double g) const {
  return std::clamp((g - gmin_) / (gmax_ - gmin_), 0.0, 1.0);
}

double KarrasSchedule::sigma_ve(double t) const {
  const double a = std::pow(smin_, 1.0 / rho_), b = std::pow(smax_, 1.0 / rho_);
  return std::pow(a + t * (b - a), rho_);
}

double KarrasSchedule::gamma(double t) const { return 2.0 * std::log(sigma_ve(t)); }

double KarrasSchedule::dgamma_dt(double t) const {
  const double a = std::pow(smin_, 1.0 / rho_), b = std::pow(smax_, 1.0 / rho_);
  return 2.0 * rho_ * (b - a) / (a + t * (b - a));
}

std::vector<double> karras_sigmas(int n, double sigma_min, double sigma_max, double rho) {
  DF_CHECK(n >= 1 && sigma_min > 0 && sigma_max >= sigma_min, "karras_sigmas: bad arguments");
  std::vector<double> s(n + 1, 0.0);
  const double a = std::pow(sigma_max, 1.0 / rho), b = std::pow(sigma_min, 1.0 / rho);
  for (int i = 0; i < n; ++i) s[i] = std::pow(n == 1 ? a : a + static_cast<double>(i) / (n - 1) * (b - a), rho);
  return s;
}

}  // namespace diffuse::diffusion
