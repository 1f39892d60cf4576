// Schedules: closed-form values, the log-SNR interface, respacing and the step spacings.
#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>

#include "models/diffusion/schedule.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::diffusion;

TEST_CASE("linear DDPM schedule matches its closed form", "[cpu][diffusion]") {
  DiscreteSchedule s = DiscreteSchedule::linear();
  REQUIRE(s.T() == 1000);
  CHECK(s.betas()[0] == Approx(1e-4).epsilon(1e-12));
  CHECK(s.betas()[999] == Approx(0.02).epsilon(1e-12));
  // alpha_bar_T = prod (1 - beta_i): computed independently in long double.
  long double a = 1;
  for (int i = 0; i < 1000; ++i) a *= 1.0L - (1e-4L + (0.02L - 1e-4L) * i / 999.0L);
  CHECK(s.alphas_cumprod()[999] == Approx(static_cast<double>(a)).epsilon(1e-10));
  CHECK(s.alphas_cumprod()[999] == Approx(4.0358e-5).epsilon(1e-3));  // the often-quoted value
  CHECK(s.alphas_cumprod_prev()[0] == 1.0);
  // Posterior: beta_tilde and the mean coefficients from Bayes' rule on q(x_{t-1}|x0) q(x_t|x_{t-1}).
  for (int i : {1, 10, 500, 999}) {
    const double b = s.betas()[i], ab = s.alphas_cumprod()[i], abp = s.alphas_cumprod()[i - 1];
    const double prec = 1.0 / (1.0 - abp) + (1.0 - b) / b;  // precision of x_{t-1}
    CHECK(s.posterior_variance()[i] == Approx(1.0 / prec).epsilon(1e-10));
    CHECK(s.posterior_mean_coef1()[i] == Approx(std::sqrt(abp) / (1.0 - abp) / prec).epsilon(1e-10));
    CHECK(s.posterior_mean_coef2()[i] == Approx(std::sqrt(1.0 - b) / b / prec).epsilon(1e-10));
    CHECK(s.alpha2(s.t_of(i)) == Approx(ab).epsilon(1e-12));
    CHECK(s.alpha2(s.t_of(i)) + s.sigma2(s.t_of(i)) == Approx(1.0).epsilon(1e-15));
  }
  CHECK(s.posterior_log_variance_clipped()[0] == Approx(std::log(s.posterior_variance()[1])));
  CHECK(std::isinf(s.gamma(0.0)));
  CHECK(s.alpha2(0.0) == 1.0);
}

TEST_CASE("cosine schedule follows f(t)/f(0) with clipped betas", "[cpu][diffusion]") {
  DiscreteSchedule s = DiscreteSchedule::cosine(1000);
  auto f = [](double t) { return std::pow(std::cos((t + 0.008) / 1.008 * std::numbers::pi / 2), 2); };
  for (int i : {0, 100, 500, 900})
    CHECK(s.alphas_cumprod()[i] == Approx(f((i + 1) / 1000.0) / f(0)).epsilon(1e-9));
  CHECK(s.betas()[999] == Approx(0.999));
  for (double b : s.betas()) CHECK(b <= 0.999);
}

TEST_CASE("linear_range and scaled_linear betas follow their formulas, unscaled", "[cpu][diffusion]") {
  // diffusers' "linear": linspace(beta_start, beta_end, T) as given.
  DiscreteSchedule lin = DiscreteSchedule::linear_range(400, 2e-4, 0.03);
  // Latent diffusion's "scaled_linear": linspace(sqrt(beta_start), sqrt(beta_end), T)^2.
  DiscreteSchedule sq = DiscreteSchedule::scaled_linear(1000, 0.00085, 0.012);
  REQUIRE(lin.T() == 400);
  REQUIRE(sq.T() == 1000);
  CHECK(sq.name() == "scaled_linear");
  long double a_lin = 1, a_sq = 1;
  for (int i = 0; i < 1000; ++i) {
    const long double r = std::sqrt(0.00085L) + (std::sqrt(0.012L) - std::sqrt(0.00085L)) * i / 999;
    a_sq *= 1 - r * r;
    CHECK(sq.betas()[i] == Approx(static_cast<double>(r * r)).epsilon(1e-14));
    CHECK(sq.alphas_cumprod()[i] == Approx(static_cast<double>(a_sq)).epsilon(1e-12));
    if (i >= 400) continue;
    const long double b = 2e-4L + (0.03L - 2e-4L) * i / 399;
    a_lin *= 1 - b;
    CHECK(lin.betas()[i] == Approx(static_cast<double>(b)).epsilon(1e-14));
    CHECK(lin.alphas_cumprod()[i] == Approx(static_cast<double>(a_lin)).epsilon(1e-12));
  }
  // linear(T) is linear_range over DDPM's ends scaled by 1000 / T, bit for bit, then capped at
  // 0.999 (below T = 20), where linear_range takes no beta at 1 or above.
  for (int T : {1000, 300}) {
    const double scale = 1000.0 / T;
    CHECK(DiscreteSchedule::linear(T).betas() == DiscreteSchedule::linear_range(T, scale * 1e-4, scale * 0.02).betas());
  }
  CHECK(DiscreteSchedule::linear(7).betas().back() == 0.999);
  CHECK_THROWS_WITH(DiscreteSchedule::linear_range(10, 0.01, 1.5), Catch::Contains("beta out of (0, 1]"));
  CHECK_THROWS_WITH(DiscreteSchedule::scaled_linear(10, 0, 0.01), Catch::Contains("must be positive"));
}

TEST_CASE("gamma is increasing and t_from_gamma inverts it on every schedule", "[cpu][diffusion]") {
  DiscreteSchedule lin = DiscreteSchedule::linear(), cos = DiscreteSchedule::cosine(200),
                   custom({0.1, 0.2, 0.3, 0.5}, "custom");
  LinearLogSNR vdm;
  KarrasSchedule kar(0.002, 80, 7);
  const Schedule* all[] = {&lin, &cos, &custom, &vdm, &kar};
  for (const Schedule* s : all) {
    double prev = -1e300;
    for (int k = 1; k <= 100; ++k) {
      const double t = k / 100.0;
      const double g = s->gamma(t);
      CHECK(g > prev);
      prev = g;
      CHECK(s->t_from_gamma(g) == Approx(t).margin(1e-9));
      CHECK(s->dgamma_dt(t) >= 0);
    }
  }
  CHECK(vdm.gamma(0) == -13.3);
  CHECK(vdm.gamma(1) == 5.0);
  CHECK(vdm.sigma2(1) == Approx(1.0 / (1.0 + std::exp(-5.0))));
  // gamma' by central differences.
  for (double t : {0.1, 0.5, 0.9}) {
    const double h = 1e-6;
    CHECK(kar.dgamma_dt(t) == Approx((kar.gamma(t + h) - kar.gamma(t - h)) / (2 * h)).epsilon(1e-6));
  }
  CHECK(std::exp(0.5 * kar.gamma(1.0)) == Approx(80.0));
  CHECK(std::exp(0.5 * kar.gamma(0.0)) == Approx(0.002));
}

TEST_CASE("Karras sigmas follow eq. 5", "[cpu][diffusion]") {
  std::vector<double> s = karras_sigmas(10, 0.002, 80, 7);
  REQUIRE(s.size() == 11);
  CHECK(s[0] == Approx(80.0));
  CHECK(s[9] == Approx(0.002));
  CHECK(s[10] == 0.0);
  for (int i = 0; i < 9; ++i) CHECK(s[i] > s[i + 1]);
  const double a = std::pow(80.0, 1 / 7.0), b = std::pow(0.002, 1 / 7.0);
  CHECK(s[4] == Approx(std::pow(a + 4 / 9.0 * (b - a), 7)));
}

TEST_CASE("step spacings and section counts", "[cpu][diffusion]") {
  CHECK(spaced_timesteps(1000, 10, Spacing::leading) == std::vector<int>{0, 100, 200, 300, 400, 500, 600, 700, 800, 900});
  CHECK(spaced_timesteps(1000, 10, Spacing::trailing) == std::vector<int>{99, 199, 299, 399, 499, 599, 699, 799, 899, 999});
  CHECK(spaced_timesteps(1000, 4, Spacing::linspace) == std::vector<int>{0, 333, 666, 999});
  CHECK(spaced_timesteps(10, 10, Spacing::linspace).size() == 10);
  // improved-DDPM's docstring example: 300 steps, sections [10, 15, 20].
  std::vector<int> s = section_timesteps(300, "10,15,20");
  CHECK(s.size() == 45);
  CHECK(s[0] == 0);
  CHECK(s[1] == 11);  // stride (100 - 1) / 9 = 11
  CHECK(s[9] == 99);
  CHECK(s[10] == 100);
  CHECK(s.back() == 299);
  std::vector<int> d = section_timesteps(1000, "ddim50");
  CHECK(d.size() == 50);
  CHECK(d[1] == 20);
  CHECK_THROWS_AS(section_timesteps(30, "20,20"), Error);
  // logsnr: uniform in gamma, so consecutive chosen steps have near-equal gamma gaps.
  DiscreteSchedule lin = DiscreteSchedule::linear();
  std::vector<int> l = spaced_timesteps(lin, 10, Spacing::logsnr);
  REQUIRE(l.size() == 10);
  CHECK(l.front() == 0);
  CHECK(l.back() == 999);
  const double gap = (lin.gamma_at(999) - lin.gamma_at(0)) / 9;
  for (int k = 1; k < 9; ++k) CHECK(std::fabs(lin.gamma_at(l[k]) - lin.gamma_at(0) - k * gap) < 0.3);
}

TEST_CASE("respacing keeps alpha_bar and the original times", "[cpu][diffusion]") {
  DiscreteSchedule s = DiscreteSchedule::cosine(1000);
  std::vector<int> use = spaced_timesteps(1000, 25, Spacing::trailing);
  DiscreteSchedule r = s.respace(use);
  REQUIRE(r.T() == 25);
  for (int k = 0; k < 25; ++k) {
    CHECK(r.alphas_cumprod()[k] == Approx(s.alphas_cumprod()[use[k]]).epsilon(1e-12));
    CHECK(r.t_of(k) == s.t_of(use[k]));
    CHECK(r.original_index(k) == use[k]);
    CHECK(r.gamma(r.t_of(k)) == Approx(s.gamma(s.t_of(use[k]))).epsilon(1e-9));
  }
  // Respacing twice composes.
  DiscreteSchedule rr = r.respace({0, 5, 24});
  CHECK(rr.original_index(1) == use[5]);
  CHECK(rr.alphas_cumprod()[2] == Approx(s.alphas_cumprod()[999]).epsilon(1e-9));
}
