// Samplers with the closed-form optimal denoiser (tests/diffusion/oracle.h): distributions,
// the probability-flow ODE, inversion, guidance and the Philox noise contract.
#include <catch2/catch.hpp>

#include <cmath>

#include "models/diffusion/sampler.h"
#include "tests/diffusion/oracle.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::diffusion;
using diffuse::test::Mixture;
using diffuse::test::Oracle;

namespace {

// z_1 drawn from the exact marginal q(z_1) = data diffused to t = 1, so the test sees the
// sampler's error and not the schedule's prior mismatch (alpha(1) > 0).
Tensor exact_z1(const Schedule& s, const Mixture& m, int64_t B, uint64_t seed) {
  std::vector<double> a(B, s.alpha(1.0)), sg(B, s.sigma(1.0));
  return q_sample(m.sample(B, seed), Tensor::randn({B, m.D()}, seed, 9), a, sg);
}

double max_abs_diff(const Tensor& a, const Tensor& b) { return test::compare(a, b).max_abs; }

}  // namespace

TEST_CASE("every sampler reproduces Gaussian and mixture data", "[cpu][diffusion]") {
  DiscreteSchedule lin = DiscreteSchedule::linear(), cos = DiscreteSchedule::cosine();
  LinearLogSNR vdm;
  Mixture gauss = Mixture::gaussian({0.5, -0.3}, {0.4, 0.7});
  Mixture mix{{0.5, 0.3, 0.2}, {{-0.6, 0.2}, {0.5, 0.5}, {0.3, -0.7}}, {{0.15, 0.2}, {0.2, 0.1}, {0.1, 0.15}}};
  struct Run {
    const char* name;
    SamplerKind kind;
    const Schedule* sch;
    int steps;
    Prediction pred;
    VarianceKind var;
    double eta;
  };
  const Run runs[] = {
      {"ddpm beta_tilde", SamplerKind::ddpm, &lin, 250, Prediction::eps, VarianceKind::beta_tilde, 0},
      {"ddpm beta", SamplerKind::ddpm, &cos, 250, Prediction::x0, VarianceKind::beta, 0},
      {"ddim eta=0", SamplerKind::ddim, &cos, 100, Prediction::v, VarianceKind::beta_tilde, 0},
      {"ddim eta=1", SamplerKind::ddim, &lin, 250, Prediction::eps, VarianceKind::beta_tilde, 1},
      {"vdm", SamplerKind::vdm, &vdm, 250, Prediction::eps, VarianceKind::beta_tilde, 0},
      {"dpm++2m", SamplerKind::dpmpp_2m, &lin, 25, Prediction::v, VarianceKind::beta_tilde, 0},
      {"dpm++2m", SamplerKind::dpmpp_2m, &vdm, 25, Prediction::eps, VarianceKind::beta_tilde, 0},
      {"euler", SamplerKind::euler, &lin, 250, Prediction::eps, VarianceKind::beta_tilde, 0},
      {"heun", SamplerKind::heun, &vdm, 25, Prediction::x0, VarianceKind::beta_tilde, 0},
  };
  const int64_t B = 2000;
  for (const Mixture* m : {&gauss, &mix}) {
    for (const Run& r : runs) {
      Oracle oracle{r.sch, *m, r.pred};
      SamplerOptions o;
      o.shape = Shape{B, 2};
      o.seed = test::next_seed();
      o.steps = r.steps;
      o.prediction = r.pred;
      o.variance = r.var;
      o.eta = r.eta;
      if (r.kind == SamplerKind::dpmpp_2m) o.spacing = Spacing::logsnr;
      if (r.kind == SamplerKind::euler || r.kind == SamplerKind::heun) o.spacing = Spacing::karras;
      o.z_T = exact_z1(*r.sch, *m, B, test::next_seed());
      Tensor x = sample(r.kind, *r.sch, oracle.fn(), o);
      const double zs = test::moment_z(test::moments(x), m->data_mean(), m->data_cov(), B);
      INFO(r.name << " on " << r.sch->name() << (m == &gauss ? " gaussian" : " mixture") << ": worst moment error "
                  << zs << " standard errors, seed " << test::run_seed());
      // 5 standard errors of a sample of 2000 (Gaussian formula; the mixture here is lighter
      // tailed, so its true errors are smaller).
      CHECK(zs < 5.0);
    }
  }
}

TEST_CASE("DDIM with eta = 0 solves the probability-flow ODE", "[cpu][diffusion]") {
  Mixture g = Mixture::gaussian({0.4, -0.2, 0.0}, {0.3, 0.6, 1.0});
  const int64_t B = 64;
  SECTION("discrete, all 1000 steps") {
    DiscreteSchedule sch = DiscreteSchedule::linear();
    Oracle oracle{&sch, g};
    SamplerOptions o;
    o.shape = Shape{B, 3};
    o.seed = test::next_seed();
    o.steps = 1000;
    Tensor zT = Tensor::randn(o.shape, o.seed, 0);
    Tensor want = test::gaussian_ode_map(g, zT, sch.alpha(1.0), sch.sigma(1.0));
    Tensor x = sample_ddim(sch, oracle.fn(), o);
    // First order in the step; the linear schedule's last steps are 0.4 apart in log-SNR, which
    // leaves ~3e-3 per unit of |z| (a numpy reference of the same update agrees).
    CHECK(max_abs_diff(x, want) < 1.5e-2);
  }
  SECTION("continuous VDM schedule") {
    LinearLogSNR sch;
    Oracle oracle{&sch, g};
    SamplerOptions o;
    o.shape = Shape{B, 3};
    o.seed = test::next_seed();
    o.steps = 2000;
    Tensor zT = Tensor::randn(o.shape, o.seed, 0);
    // The flow ends at t = 0, alpha(0) < 1, and the sampler divides by alpha(0).
    Tensor want = test::gaussian_ode_map(g, zT, sch.alpha(1.0), sch.sigma(1.0), sch.alpha(0.0), sch.sigma(0.0));
    Tensor x = sample_ddim(sch, oracle.fn(), o);
    CHECK(max_abs_diff(x, want) < 1e-2);
  }
}

TEST_CASE("ODE solvers converge at their order; at 20 steps DPM-Solver++(2M) beats DDIM", "[cpu][diffusion]") {
  Mixture g = Mixture::gaussian({0.4, -0.2}, {0.3, 0.8});
  const int64_t B = 256;
  DiscreteSchedule lin = DiscreteSchedule::linear();
  LinearLogSNR vdm;
  for (const Schedule* sch : {static_cast<const Schedule*>(&lin), static_cast<const Schedule*>(&vdm)}) {
    const bool continuous = sch == &vdm;
    Oracle oracle{sch, g};
    SamplerOptions o;
    o.shape = Shape{B, 2};
    o.seed = test::next_seed();
    o.spacing = Spacing::logsnr;
    Tensor zT = Tensor::randn(o.shape, o.seed, 0);
    const double a0 = sch->alpha(0.0), s0 = sch->sigma(0.0);
    Tensor want = test::gaussian_ode_map(g, zT, sch->alpha(1.0), sch->sigma(1.0), a0, s0);
    // The Karras samplers integrate to sigma = 0 from the schedule's sigma_max: the data map.
    Tensor want_k = test::gaussian_ode_map(g, zT, sch->alpha(1.0), sch->sigma(1.0));
    double e[4][2];  // DDIM, DPM-Solver++(2M), Euler, Heun at 20 and 40 steps
    for (int r = 0; r < 2; ++r) {
      o.steps = 20 << r;
      e[0][r] = max_abs_diff(sample_ddim(*sch, oracle.fn(), o), want);
      e[1][r] = max_abs_diff(sample_dpmpp_2m(*sch, oracle.fn(), o), want);
      SamplerOptions ok = o;  // the Karras samplers on their own EDM ramp
      ok.spacing = Spacing::karras;
      e[2][r] = max_abs_diff(sample_euler(*sch, oracle.fn(), ok), want_k);
      e[3][r] = max_abs_diff(sample_heun(*sch, oracle.fn(), ok), want_k);
    }
    INFO(sch->name() << " max error at 20/40 steps: DDIM " << e[0][0] << "/" << e[0][1] << ", DPM-Solver++(2M) "
                     << e[1][0] << "/" << e[1][1] << ", Euler " << e[2][0] << "/" << e[2][1] << ", Heun " << e[3][0]
                     << "/" << e[3][1]);
    CHECK(e[1][0] < 0.25 * e[0][0]);
    CHECK(e[3][0] < 0.5 * e[2][0]);
    if (continuous) {
      // Halving the step: first order halves the error, second order quarters it.
      CHECK(e[0][0] / e[0][1] > 1.6);
      CHECK(e[2][0] / e[2][1] > 1.6);
      CHECK(e[1][0] / e[1][1] > 3.0);
      CHECK(e[3][0] / e[3][1] > 3.0);
    }
  }
}

TEST_CASE("DDIM inversion then DDIM sampling returns the input", "[cpu][diffusion]") {
  Mixture g = Mixture::gaussian({0.3, -0.1}, {0.5, 0.4});
  DiscreteSchedule sch = DiscreteSchedule::cosine();
  Oracle oracle{&sch, g};
  const int64_t B = 64;
  SamplerOptions o;
  o.steps = 500;
  o.shape = Shape{B, 2};
  Tensor x0 = g.sample(B, test::next_seed());
  Tensor zT = ddim_invert(sch, oracle.fn(), x0, o);
  // The inversion is the exact forward ODE map up to O(1/N): z = a mu + sqrt(a^2 s^2 + sigma^2) (x - mu)/s.
  Tensor fwd = Tensor::empty(x0.shape());
  const double a = sch.alpha(1.0), s1 = sch.sigma(1.0);
  for (int64_t i = 0; i < x0.numel(); ++i) {
    const int j = static_cast<int>(i % 2);
    const double mu = g.mean[0][j], s = g.stdev[0][j];
    fwd.data<float>()[i] = static_cast<float>(a * mu + std::sqrt(a * a * s * s + s1 * s1) * (x0.data<float>()[i] - mu) / s);
  }
  CHECK(max_abs_diff(zT, fwd) < 2e-2);
  o.z_T = zT;
  Tensor back = sample_ddim(sch, oracle.fn(), o);
  INFO(test::compare(back, x0).str());
  CHECK(max_abs_diff(back, x0) < 2e-2);
}

TEST_CASE("the same seed gives the same samples; z_T and callbacks", "[cpu][diffusion]") {
  DiscreteSchedule sch = DiscreteSchedule::linear();
  Mixture g = Mixture::gaussian({0.1}, {0.5});
  Oracle oracle{&sch, g};
  SamplerOptions o;
  o.shape = Shape{8, 1};
  o.seed = test::next_seed();
  o.steps = 30;
  o.eta = 1;
  int seen = 0;
  o.callback = [&](int k, int n, const Tensor& z, const Tensor& x0) {
    CHECK(k == seen++);
    CHECK(n == 30);
    CHECK(z.shape() == o.shape);
    CHECK(x0.shape() == o.shape);
  };
  Tensor a = sample_ddim(sch, oracle.fn(), o);
  CHECK(seen == 30);
  CHECK(oracle.calls == 30);
  o.callback = nullptr;
  Tensor b = sample_ddim(sch, oracle.fn(), o);
  CHECK(a.to_vector() == b.to_vector());
  o.seed += 1;
  CHECK(sample_ddim(sch, oracle.fn(), o).to_vector() != a.to_vector());
  // An explicit z_T equal to the seed's stream-0 noise reproduces the default start.
  o.seed -= 1;
  o.z_T = Tensor::randn(o.shape, o.seed, 0);
  CHECK(sample_ddim(sch, oracle.fn(), o).to_vector() == a.to_vector());
}

TEST_CASE("respaced grids: section counts, explicit steps and spacings agree", "[cpu][diffusion]") {
  DiscreteSchedule sch = DiscreteSchedule::linear();
  SamplerOptions o;
  o.section_counts = "ddim50";
  std::vector<double> a = sampling_times(sch, o);
  o.section_counts.clear();
  o.timesteps = section_timesteps(1000, "ddim50");
  CHECK(sampling_times(sch, o) == a);
  REQUIRE(a.size() == 51);
  CHECK(a.front() == Approx(981.0 / 1000));
  CHECK(a.back() == 0.0);
  o.timesteps.clear();
  o.steps = 10;
  o.spacing = Spacing::trailing;
  CHECK(sampling_times(sch, o).front() == 1.0);
  CHECK(discrete_index(static_cast<float>(sch.t_of(417)), 1000) == 417);
}

TEST_CASE("learned variance at its ends equals the fixed variances", "[cpu][diffusion]") {
  DiscreteSchedule sch = DiscreteSchedule::linear(200);
  Mixture g = Mixture::gaussian({0.2, -0.3}, {0.5, 0.5});
  for (float r : {-1.f, 1.f}) {
    Oracle oracle{&sch, g};
    Denoiser learned = [&](const Tensor& z, const Tensor& t, const Tensor& y) {
      Tensor e = oracle(z, t, y);
      const int64_t B = z.size(0), C = z.size(1);
      Tensor out = Tensor::empty({B, 2 * C});
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = 0; c < C; ++c) {
          out.data<float>()[b * 2 * C + c] = e.data<float>()[b * C + c];
          out.data<float>()[b * 2 * C + C + c] = r;
        }
      return out;
    };
    SamplerOptions o;
    o.shape = Shape{16, 2};
    o.seed = test::next_seed();
    o.steps = 50;
    o.variance = VarianceKind::learned;
    Tensor x = sample_ddpm(sch, learned, o);
    o.variance = r < 0 ? VarianceKind::beta_tilde : VarianceKind::beta;
    Tensor y = sample_ddpm(sch, oracle.fn(), o);
    INFO("r = " << r << ": " << test::compare(x, y).str());
    // exp(0.5 log var) against sqrt(var): a few ulps per step.
    CHECK(test::allclose(x, y, 1e-4, 1e-5));
  }
}

TEST_CASE("classifier-free guidance: one 2B call per step, same as combining by hand", "[cpu][diffusion]") {
  DiscreteSchedule sch = DiscreteSchedule::linear();
  // Label 0: N(0.5, 0.3^2); label 1: N(-0.5, 0.3^2); the null label 2: the even mixture.
  Mixture c0 = Mixture::gaussian({0.5}, {0.3}), c1 = Mixture::gaussian({-0.5}, {0.3});
  Mixture cn{{0.5, 0.5}, {{0.5}, {-0.5}}, {{0.3}, {0.3}}};
  Oracle o0{&sch, c0}, o1{&sch, c1}, on{&sch, cn};
  int calls = 0;
  int64_t rows = 0;
  Denoiser f = [&](const Tensor& z, const Tensor& t, const Tensor& y) {
    ++calls;
    rows += z.size(0);
    Tensor out = Tensor::empty(z.shape());
    for (int64_t b = 0; b < z.size(0); ++b) {
      const int64_t lab = y.to_vector_i64()[b];
      Oracle& o = lab == 0 ? o0 : lab == 1 ? o1 : on;
      out.slice(b, b + 1).copy_(o(z.slice(b, b + 1), t.slice(b, b + 1), Tensor()));
    }
    return out;
  };
  const int64_t B = 6;
  SamplerOptions o;
  o.shape = Shape{B, 1};
  o.seed = test::next_seed();
  o.steps = 20;
  o.labels = Tensor::from_vector_i64({0, 1, 0, 1, 1, 0}, {B});
  o.guidance.cfg_scale = 3.0;
  o.guidance.null_labels = Tensor::from_vector_i64(std::vector<int64_t>(B, 2), {B});
  Tensor guided = sample_ddim(sch, f, o);
  CHECK(calls == 20);
  CHECK(rows == 20 * 2 * B);
  // By hand: a denoiser that combines (1 + w) f(z, y) - w f(z, null) itself, on B rows.
  Denoiser manual = [&](const Tensor& z, const Tensor& t, const Tensor& y) {
    Tensor c = f(z, t, y), u = f(z, t, o.guidance.null_labels);
    Tensor out = Tensor::empty(z.shape());
    for (int64_t i = 0; i < z.numel(); ++i) out.data<float>()[i] = 4.f * c.data<float>()[i] - 3.f * u.data<float>()[i];
    return out;
  };
  SamplerOptions o2 = o;
  o2.guidance = Guidance{};
  Tensor by_hand = sample_ddim(sch, manual, o2);
  CHECK(test::allclose(guided, by_hand, 1e-5, 1e-6));
  // Guidance pushes each sample to its class's side, beyond the class mean.
  std::vector<float> x = guided.to_vector();
  for (int64_t b = 0; b < B; ++b) CHECK((o.labels.to_vector_i64()[b] == 0 ? x[b] > 0 : x[b] < 0));
}

TEST_CASE("classifier guidance with the exact noisy classifier samples the posterior", "[cpu][diffusion]") {
  // x ~ N(mu, s^2) per dim and p(y | x) = N(m; x, r^2): p(y | z_t) = N(m; E[x|z_t], Var[x|z_t] + r^2)
  // is closed form, and its score added to the data score is the score of p(x | y) diffused,
  // so deterministic DDIM with scale 1 samples p(x | y) = N(mean_p, var_p) (Dhariwal & Nichol
  // 2021, sec. 4.1; Song et al. 2021 (SDE) sec. 5).
  DiscreteSchedule sch = DiscreteSchedule::linear();
  const double mu = 0.2, s = 0.5, m = 0.9, r = 0.3;
  Mixture g = Mixture::gaussian({mu}, {s});
  Oracle oracle{&sch, g};
  SamplerOptions o;
  const int64_t B = 2000;
  o.shape = Shape{B, 1};
  o.seed = test::next_seed();
  o.steps = 200;
  o.z_T = exact_z1(sch, g, B, test::next_seed());
  o.guidance.grad_log_p = [&](const Tensor& z, const Tensor& t, const Tensor&) {
    Tensor grad = Tensor::empty(z.shape());
    for (int64_t b = 0; b < z.size(0); ++b) {
      const double a = sch.alpha(t.data<float>()[b]), sg = sch.sigma(t.data<float>()[b]);
      const double v = a * a * s * s + sg * sg, k = a * s * s / v;
      const double ex = mu + k * (z.data<float>()[b] - a * mu), var = s * s * sg * sg / v;
      grad.data<float>()[b] = static_cast<float>((m - ex) / (var + r * r) * k);
    }
    return grad;
  };
  Tensor x = sample_ddim(sch, oracle.fn(), o);
  const double vp = 1.0 / (1.0 / (s * s) + 1.0 / (r * r)), mp = vp * (mu / (s * s) + m / (r * r));
  const double zs = test::moment_z(test::moments(x), {mp}, {vp}, B);
  INFO("posterior N(" << mp << ", " << vp << "): worst moment error " << zs << " SE, seed " << test::run_seed());
  CHECK(zs < 5.0);
}

TEST_CASE("slerp", "[cpu][diffusion]") {
  Tensor a = Tensor::from_vector({1, 0, 0, 2, 0, 0}, {2, 3}), b = Tensor::from_vector({0, 1, 0, 0, 0, 2}, {2, 3});
  CHECK(slerp(a, b, 0.0).to_vector() == a.to_vector());
  std::vector<float> h = slerp(a, b, 0.5).to_vector();
  CHECK(h[0] == Approx(std::sqrt(0.5)));
  CHECK(h[1] == Approx(std::sqrt(0.5)));
  CHECK(h[3] == Approx(2 * std::sqrt(0.5)));
  CHECK(h[5] == Approx(2 * std::sqrt(0.5)));
  CHECK(test::allclose(slerp(a, b, 1.0), b, 1e-6, 1e-6));
}

TEST_CASE("sampler_spacing: the spacing asked for, else karras for euler and heun and linspace for the others",
          "[cpu][diffusion]") {
  for (const auto& e : enum_names<SamplerKind>()) {
    INFO(e.name);
    const bool karras = e.value == SamplerKind::euler || e.value == SamplerKind::heun;
    CHECK(sampler_spacing(e.value, std::nullopt) == (karras ? Spacing::karras : Spacing::linspace));
    for (const auto& sp : enum_names<Spacing>()) CHECK(sampler_spacing(e.value, sp.value) == sp.value);
  }
}
