// Objectives with the optimal denoiser of Gaussian data: each loss equals its closed form.
#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>

#include "models/diffusion/objective.h"
#include "tests/diffusion/oracle.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::diffusion;
using diffuse::test::Mixture;
using diffuse::test::Oracle;

namespace {
double mean_of(const Tensor& t) {
  double m = 0;
  for (float v : t.to_vector()) m += v;
  return m / t.numel();
}
double se_of(const Tensor& t) {
  const double m = mean_of(t);
  double v = 0;
  for (float x : t.to_vector()) v += (x - m) * (x - m);
  return std::sqrt(v / (t.numel() - 1) / t.numel());
}
}  // namespace

TEST_CASE("prediction conversions round-trip", "[cpu][diffusion]") {
  const int B = 4;
  Tensor x0 = test::random_tensor({B, 3, 5}), eps = test::random_normal({B, 3, 5});
  std::vector<double> a(B), s(B);
  for (int b = 0; b < B; ++b) {
    const double g = -4 + 2.5 * b;
    a[b] = std::sqrt(sigmoid(-g));
    s[b] = std::sqrt(sigmoid(g));
  }
  Tensor z = q_sample(x0, eps, a, s);
  Tensor v = prediction_target(Prediction::v, x0, eps, a, s);
  // Each prediction converts to the others exactly (f32 rounding of O(1) values).
  const Tensor by[] = {eps, x0, v};
  const Prediction kinds[] = {Prediction::eps, Prediction::x0, Prediction::v};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      Tensor got = convert_prediction(kinds[i], kinds[j], z, by[i], a, s);
      INFO(to_string(kinds[i]) << " -> " << to_string(kinds[j]) << ": " << test::compare(got, by[j]).str());
      // x0 from eps divides by alpha (>= 0.12 here): error grows by 1/alpha.
      CHECK(test::allclose(got, by[j], 1e-4, 5e-5));
    }
}

TEST_CASE("min-SNR weights", "[cpu][diffusion]") {
  CHECK(min_snr_weight(Prediction::eps, 10.0, 5.0) == Approx(0.5));
  CHECK(min_snr_weight(Prediction::eps, 2.0, 5.0) == Approx(1.0));
  CHECK(min_snr_weight(Prediction::x0, 10.0, 5.0) == Approx(5.0));
  CHECK(min_snr_weight(Prediction::v, 10.0, 5.0) == Approx(5.0 / 11.0));
}

TEST_CASE("normal KL and the discretized Gaussian likelihood", "[cpu][diffusion]") {
  CHECK(normal_kl(0, 0, 0, 0) == 0.0);
  CHECK(normal_kl(1, std::log(4.0), 0, 0) == Approx(0.5 * (4 + 1 - 1 - std::log(4.0))));
  // The 256 bins partition the real line: their masses sum to 1 for any mean and scale.
  for (double mean : {-1.2, -0.3, 0.0, 0.77, 1.0})
    for (double ls : {-6.0, -3.0, -1.0, 0.5}) {
      double tot = 0;
      for (int k = 0; k < 256; ++k) tot += std::exp(discretized_gaussian_log_likelihood(2.0 * k / 255 - 1, mean, ls));
      CHECK(tot == Approx(1.0).epsilon(1e-6));
    }
  // An interior bin of a wide Gaussian: width times density.
  const double w = 2.0 / 255, x = 2.0 * 130 / 255 - 1;
  CHECK(discretized_gaussian_log_likelihood(x, 0.1, 0.0) ==
        Approx(std::log(w * std::exp(-0.5 * (x - 0.1) * (x - 0.1)) / std::sqrt(2 * std::numbers::pi))).epsilon(1e-4));
}

TEST_CASE("L_simple of the optimal denoiser equals the MMSE", "[cpu][diffusion]") {
  // eps_hat = E[eps | z_t] for x ~ N(mu, s^2): E||eps - eps_hat||^2 per dim = a^2 s^2 / (a^2 s^2 + sigma^2).
  DiscreteSchedule sch = DiscreteSchedule::linear();
  Mixture g = Mixture::gaussian({0.3, -0.5, 0.1}, {0.5, 0.2, 0.8});
  Oracle oracle{&sch, g};
  const int B = 4000;
  for (int i : {10, 300, 700}) {
    const double t = sch.t_of(i), a = sch.alpha(t), s = sch.sigma(t);
    Tensor x0 = g.sample(B, test::next_seed());
    Tensor eps = Tensor::randn({B, 3}, test::next_seed());
    Tensor z = q_sample(x0, eps, std::vector<double>(B, a), std::vector<double>(B, s));
    Tensor eps_hat = oracle(z, Tensor::full({B}, t), Tensor());
    Tensor per = mse_per_sample(eps, eps_hat);
    double want = 0;
    for (int j = 0; j < 3; ++j) {
      const double sj = g.stdev[0][j];
      want += a * a * sj * sj / (a * a * sj * sj + s * s) / 3;
    }
    INFO("step " << i << " seed " << test::run_seed());
    CHECK(std::fabs(mean_of(per) - want) < 5 * se_of(per));
    CHECK(l_simple(eps, eps_hat) == Approx(mean_of(per)).epsilon(1e-6));
  }
}

TEST_CASE("VLB terms of the optimal denoiser equal their closed forms", "[cpu][diffusion]") {
  DiscreteSchedule sch = DiscreteSchedule::linear(100);
  Mixture g = Mixture::gaussian({0.2, -0.4}, {0.5, 0.3});
  const int B = 4000, D = 2;
  SECTION("prior term L_T") {
    Tensor x0 = g.sample(B, test::next_seed());
    Tensor kl = prior_kl(sch, x0);
    const double a2 = sch.alphas_cumprod()[99], s2 = 1 - a2;
    double want = 0;
    for (int j = 0; j < D; ++j) {
      const double m = g.mean[0][j], s = g.stdev[0][j];
      want += 0.5 * (s2 + a2 * (m * m + s * s) - 1 - std::log(s2));
    }
    CHECK(std::fabs(mean_of(kl) - want) < 5 * se_of(kl) + 1e-9);
  }
  SECTION("L_t with beta_tilde: coef1^2 E(x0 - x0_hat)^2 / (2 beta_tilde)") {
    for (Prediction p : {Prediction::eps, Prediction::x0, Prediction::v}) {
      Oracle oracle{&sch, g, p};
      for (int i : {5, 50, 95}) {
        const double t = sch.t_of(i), a = sch.alpha(t), s = sch.sigma(t);
        Tensor x0 = g.sample(B, test::next_seed());
        Tensor eps = Tensor::randn({B, D}, test::next_seed());
        Tensor z = q_sample(x0, eps, std::vector<double>(B, a), std::vector<double>(B, s));
        Tensor out = oracle(z, Tensor::full({B}, t), Tensor());
        Tensor term = vlb_term(sch, i, x0, z, out, p, VarianceKind::beta_tilde);
        double want = 0;
        const double c1 = sch.posterior_mean_coef1()[i], bt = sch.posterior_variance()[i];
        for (int j = 0; j < D; ++j) {
          const double sj = g.stdev[0][j];
          want += c1 * c1 * sj * sj * s * s / (a * a * sj * sj + s * s) / (2 * bt);
        }
        INFO(to_string(p) << " step " << i << " got " << mean_of(term) << " want " << want << " seed " << test::run_seed());
        // f32 rounding of mean differences, relative to the posterior std, bounds the extra error.
        CHECK(std::fabs(mean_of(term) - want) < 5 * se_of(term) + 2e-3 * want);
      }
    }
  }
  SECTION("learned variance interpolates log beta and log beta_tilde") {
    Tensor raw = Tensor::from_vector({-1.f, 1.f, 0.f}, {1, 3});
    std::vector<float> lv = learned_log_variance(sch, 40, raw).to_vector();
    CHECK(lv[0] == Approx(std::log(sch.posterior_variance()[40])));
    CHECK(lv[1] == Approx(std::log(sch.betas()[40])));
    CHECK(lv[2] == Approx(0.5 * (std::log(sch.betas()[40]) + std::log(sch.posterior_variance()[40]))));
  }
}

TEST_CASE("VDM diffusion loss of the optimal denoiser integrates to its closed form", "[cpu][diffusion]") {
  // int_0^1 0.5 gamma' a^2 s^2 / (a^2 s^2 + sigma^2) dt = 0.5 [log(1 + s^2 e^-gmin) - log(1 + s^2 e^-gmax)].
  LinearLogSNR sch;
  Mixture g = Mixture::gaussian({0.1, 0.6}, {0.4, 0.25});
  Oracle oracle{&sch, g};
  const int B = 8000, D = 2;
  std::vector<double> t = low_discrepancy_times(B, test::next_seed());
  std::vector<double> a(B), s(B), dg(B);
  for (int b = 0; b < B; ++b) {
    a[b] = sch.alpha(t[b]);
    s[b] = sch.sigma(t[b]);
    dg[b] = sch.dgamma_dt(t[b]);
  }
  Tensor x0 = g.sample(B, test::next_seed());
  Tensor eps = Tensor::randn({B, D}, test::next_seed());
  Tensor z = q_sample(x0, eps, a, s);
  std::vector<float> tf(t.begin(), t.end());
  Tensor loss = vdm_diffusion_loss(eps, oracle(z, Tensor::from_vector(tf, {B}), Tensor()), dg);
  double want = 0;
  for (int j = 0; j < D; ++j) {
    const double s2 = g.stdev[0][j] * g.stdev[0][j];
    want += 0.5 * (std::log1p(s2 * std::exp(13.3)) - std::log1p(s2 * std::exp(-5.0)));
  }
  INFO("got " << mean_of(loss) << " want " << want);
  CHECK(std::fabs(mean_of(loss) - want) < 5 * se_of(loss));
  // Low discrepancy: one point in each 1/B stratum.
  std::vector<int> hits(B, 0);
  for (double x : t) hits[std::min(B - 1, static_cast<int>(x * B))]++;
  for (int h : hits) CHECK(h == 1);
}

TEST_CASE("loss second-moment resampler", "[cpu][diffusion]") {
  LossSecondMomentResampler r(4, 10, 1e-3);
  CHECK(!r.warmed_up());
  for (double w : r.weights()) CHECK(w == 0.25);
  // Fill: L_t = t + 1 for every t; p_t ∝ sqrt(E L_t^2) = t + 1.
  for (int k = 0; k < 12; ++k) r.update({0, 1, 2, 3}, {1.0, 2.0, 3.0, 4.0});
  REQUIRE(r.warmed_up());
  std::vector<double> w = r.weights();
  for (int t = 0; t < 4; ++t) CHECK(w[t] == Approx((t + 1) / 10.0 * (1 - 1e-3) + 1e-3 / 4));
  // Importance weights make the estimate unbiased: E[w(t) L_t] = mean_t L_t.
  auto d = r.sample(20000, test::next_seed());
  double est = 0;
  for (size_t i = 0; i < d.t.size(); ++i) est += d.weights[i] * (d.t[i] + 1.0) / d.t.size();
  // L_t / (T p_t) is nearly constant here (p_t ∝ L_t but for the uniform mix): tight tolerance.
  CHECK(est == Approx(2.5).epsilon(2e-3));
  // Frequencies follow p_t.
  std::vector<int> n(4, 0);
  for (int t : d.t) n[t]++;
  for (int t = 0; t < 4; ++t) CHECK(std::fabs(n[t] / 20000.0 - w[t]) < 5 * std::sqrt(w[t] * (1 - w[t]) / 20000));
  // The history keeps the last 10: a new regime replaces the old one.
  for (int k = 0; k < 10; ++k) r.update({0}, {8.0});
  CHECK(r.weights()[0] > r.weights()[3]);
}

TEST_CASE("loss second-moment resampler: warm-up, sqrt(E[L^2]) of each history, an unbiased estimator, its state",
          "[cpu][diffusion]") {
  const int T = 6;
  LossSecondMomentResampler r(T, 10, 1e-3);
  // Warm-up: until every t has 10 losses the draws are uniform with weight 1, however uneven the
  // losses seen so far.
  for (int k = 0; k < 10; ++k) r.update({0, 1, 2, 3, 4}, {100.0, 1.0, 1.0, 1.0, 1.0});
  for (int k = 0; k < 9; ++k) r.update({5}, {0.01});
  REQUIRE_FALSE(r.warmed_up());
  {
    const int n = 60000;
    auto d = r.sample(n, test::next_seed(), 3);
    std::vector<int> hits(T, 0);
    for (int i = 0; i < n; ++i) {
      CHECK(d.weights[i] == Approx(1.0).epsilon(1e-12));
      hits[d.t[i]]++;
    }
    // Binomial(n, 1/6): 5 standard errors.
    for (int h : hits) CHECK(std::fabs(h - n / 6.0) < 5 * std::sqrt(n * (1.0 / 6) * (5.0 / 6)));
  }
  // A fixed loss table with histories that vary within each t: p_t is proportional to the root
  // mean square of the last 10 values (not their mean), mixed with 1e-3 of the uniform.
  LossSecondMomentResampler q(T, 10, 1e-3);
  std::vector<std::vector<double>> table(T);
  for (int t = 0; t < T; ++t)
    for (int k = 0; k < 14; ++k) table[t].push_back((t + 1) * (1.0 + 0.5 * ((k * 7 + t) % 5)));
  for (int k = 0; k < 14; ++k)
    for (int t = 0; t < T; ++t) q.update({t}, {table[t][k]});
  REQUIRE(q.warmed_up());
  std::vector<double> rms(T, 0.0);
  double sum = 0;
  for (int t = 0; t < T; ++t) {
    for (int k = 4; k < 14; ++k) rms[t] += table[t][k] * table[t][k] / 10;  // the last 10 of 14
    sum += rms[t] = std::sqrt(rms[t]);
  }
  const std::vector<double> p = q.weights();
  double psum = 0;
  for (int t = 0; t < T; ++t) {
    CHECK(p[t] == Approx(rms[t] / sum * (1 - 1e-3) + 1e-3 / T).epsilon(1e-12));
    psum += p[t];
  }
  CHECK(psum == Approx(1.0).epsilon(1e-12));
  // Unbiased: for any per-step loss L_t, E_{t~p}[L_t / (T p_t)] = (1/T) sum_t L_t exactly, and the
  // sampled estimate agrees within its standard error. The loss here is not proportional to p
  // (the last history values), so the weights do not cancel.
  std::vector<double> L(T);
  double mean_L = 0;
  for (int t = 0; t < T; ++t) mean_L += (L[t] = table[t][13] + 0.3 * (T - t)) / T;
  double exact = 0;
  for (int t = 0; t < T; ++t) exact += p[t] * L[t] / (T * p[t]);
  CHECK(exact == Approx(mean_L).epsilon(1e-12));
  const int n = 200000;
  auto d = q.sample(n, test::next_seed(), 5);
  double est = 0, sq = 0;
  for (int i = 0; i < n; ++i) {
    CHECK(d.weights[i] == Approx(1.0 / (T * p[d.t[i]])).epsilon(1e-12));
    const double v = d.weights[i] * L[d.t[i]];
    est += v / n;
    sq += v * v / n;
  }
  const double se = std::sqrt((sq - est * est) / n);
  INFO("estimate " << est << " +- " << se << ", exact " << mean_L);
  CHECK(std::fabs(est - mean_L) < 5 * se);
  // The state round-trips: a resampler given it draws the same steps and weights.
  LossSecondMomentResampler c(T, 10, 1e-3);
  c.set_state(q.state());
  CHECK(c.warmed_up());
  auto d2 = c.sample(64, 99, 7), d1 = q.sample(64, 99, 7);
  CHECK(d1.t == d2.t);
  CHECK(d1.weights == d2.weights);
  LossSecondMomentResampler::State bad = q.state();
  bad.counts[2] = 11;
  CHECK_THROWS_WITH(c.set_state(bad), Catch::Contains("count of 11"));
  bad = q.state();
  bad.losses.pop_back();
  CHECK_THROWS_WITH(c.set_state(bad), Catch::Contains("expected 6 x 10"));
}
