// Annealed Langevin dynamics and the predictor-corrector sampler (models/diffusion/langevin.h)
// with the exact score of Gaussian data (tests/diffusion/oracle.h): the fixed-level chain's
// stationary law, the data moments both samplers reach, PC with no corrector as its predictor,
// what the corrector buys at a fixed predictor step count, guidance, and the Philox contract.
//
// The distribution error of a run is the 2-Wasserstein distance between the Gaussians fitted to
// the samples (per-dimension mean and standard deviation) and the data's:
//   W2 = sqrt(sum_j (m_j - mu_j)^2 + (sd_j - s_j)^2),
// a moment error in data units that a sample of B points leaves at about sqrt(1.5 sum_j s_j^2 / B)
// from sampling alone. The table in docs/diffusion.md is printed by the hidden test at the end:
//   <build folder>/test_diffusion "[langevin-table]"
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "models/diffusion/langevin.h"
#include "models/diffusion/sampler.h"
#include "tests/diffusion/oracle.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::diffusion;
using diffuse::test::Mixture;
using diffuse::test::Oracle;

namespace {

// The accuracy table's data (sampler_accuracy_test.cpp): three scales around [-1, 1].
Mixture data() { return Mixture::gaussian({0.4, -0.2, 0.1}, {0.3, 0.6, 1.0}); }

// z_1 from the exact q(z_1), so the error is the sampler's and not the prior's (alpha(1) > 0).
Tensor exact_z1(const Schedule& s, const Mixture& m, int64_t B, uint64_t seed) {
  std::vector<double> a(B, s.alpha(1.0)), sg(B, s.sigma(1.0));
  return q_sample(m.sample(B, seed), Tensor::randn({B, m.D()}, seed, 9), a, sg);
}

double w2_error(const Tensor& x, const Mixture& g) {
  const test::Moments m = test::moments(x);
  const int d = g.D();
  double e = 0;
  for (int j = 0; j < d; ++j) {
    const double dm = m.mean[j] - g.mean[0][j], ds = std::sqrt(m.cov[j * d + j]) - g.stdev[0][j];
    e += dm * dm + ds * ds;
  }
  return std::sqrt(e);
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

}  // namespace

TEST_CASE("Langevin at a fixed noise level converges to its stationary law", "[cpu][diffusion]") {
  // At level t the target is q_t = N(a mu, v), v = a^2 s^2 + sigma^2 per dimension, and the exact
  // score is -(z - a mu) / v. The discretised chain z' = z - h (z - a mu)/v + sqrt(2h) n (the
  // unadjusted Langevin algorithm) is then a Gaussian AR(1) whose stationary law is known exactly:
  // mean a mu and variance v / (1 - h / (2v)) (the O(h) bias of ULA). With h = 2 r^2 sigma^2
  // (the noise_level rule, alpha_k = 1) the chains started far away (mean 3, variance 4) must
  // land on it within 5 standard errors.
  const LinearLogSNR sch;
  const Mixture g = data();
  Oracle oracle{&sch, g};
  const int64_t B = 4000;
  const int d = g.D();
  // The level where alpha = sigma (gamma = 0), so the three dimensions mix at different rates.
  const double t = sch.t_from_gamma(0.0), r = 0.25, a = sch.alpha(t), sg = sch.sigma(t), h = 2 * r * r * sg * sg;
  SamplerOptions o;
  o.seed = test::next_seed();
  o.corrector_steps = 400;
  o.snr = r;
  Tensor start = Tensor::randn({B, d}, o.seed, 77);
  for (int64_t i = 0; i < start.numel(); ++i) start.data<float>()[i] = 3.f + 2.f * start.data<float>()[i];
  Tensor z = langevin_correct(sch, oracle.fn(), start, t, 1.0, LangevinStepSize::noise_level, o, 0);
  CHECK(oracle.calls == 400);
  const test::Moments m = test::moments(z);
  std::vector<double> mean(d), cov(d * d, 0.0);
  for (int j = 0; j < d; ++j) {
    const double s = g.stdev[0][j], v = a * a * s * s + sg * sg;
    mean[j] = a * g.mean[0][j];
    cov[j * d + j] = v / (1 - h / (2 * v));
    INFO("dim " << j << ": mean " << m.mean[j] << " want " << mean[j] << ", variance " << m.cov[j * d + j]
                << " want " << cov[j * d + j] << " (target q_t: " << v << "), h " << h);
    // The slowest dimension contracts by 1 - h/v per step: far below the tolerance after 400.
    CHECK(std::pow(1 - h / v, 400) * 3 < 1e-3);
  }
  const double zs = test::moment_z(m, mean, cov, B);
  INFO("worst moment error " << zs << " standard errors, seed " << test::run_seed());
  CHECK(zs < 5.0);
}

TEST_CASE("annealed Langevin and predictor-corrector reach the data's moments", "[cpu][diffusion]") {
  const DiscreteSchedule lin = DiscreteSchedule::linear();
  const LinearLogSNR vdm;
  const Mixture g = data();
  const int64_t B = 20000;
  // Tolerances: the sampling error alone, sqrt(1.5 sum s^2 / B) = 0.011 for B = 20000, plus the
  // method's bias at these settings, measured at 0.02-0.03 for PC (100 ancestral steps, whose own
  // bias is 0.06 at 100 steps; docs/diffusion.md) and 0.013-0.017 for annealed Langevin (100
  // levels of 10 steps at r = 0.32, NCSN-like; the score-SDE default 0.16 needs more steps).
  struct Run {
    const char* name;
    SamplerKind kind;
    const Schedule* sch;
    int steps, corrector_steps;
    double snr;
    Spacing spacing;
    Prediction pred;
    double tol;  // W2 tolerance, data units
  };
  const Run runs[] = {
      {"pc", SamplerKind::pc, &lin, 100, 1, 0.16, Spacing::linspace, Prediction::eps, 0.05},
      {"pc", SamplerKind::pc, &vdm, 100, 1, 0.16, Spacing::linspace, Prediction::v, 0.05},
      {"langevin", SamplerKind::langevin, &lin, 100, 10, 0.32, Spacing::logsnr, Prediction::eps, 0.04},
      {"langevin", SamplerKind::langevin, &vdm, 100, 10, 0.32, Spacing::linspace, Prediction::x0, 0.04},
  };
  for (const Run& r : runs) {
    Oracle oracle{r.sch, g, r.pred};
    SamplerOptions o;
    o.shape = Shape{B, g.D()};
    o.seed = test::next_seed();
    o.steps = r.steps;
    o.corrector_steps = r.corrector_steps;
    o.snr = r.snr;
    o.spacing = r.spacing;
    o.prediction = r.pred;
    o.z_T = exact_z1(*r.sch, g, B, test::next_seed());
    const Tensor x = sample(r.kind, *r.sch, oracle.fn(), o);
    // The logsnr spacing of a discrete schedule can merge levels that round to the same step.
    const int levels = static_cast<int>(sampling_times(*r.sch, o).size()) - 1;
    CHECK(levels <= r.steps);
    const int want_calls = r.kind == SamplerKind::pc ? levels * (r.corrector_steps + 1)
                                                     : levels * r.corrector_steps + 1;
    CHECK(oracle.calls == want_calls);
    const double e = w2_error(x, g);
    INFO(r.name << " on " << r.sch->name() << ", " << r.steps << " steps x " << r.corrector_steps
                << " corrector steps: W2 " << e << ", seed " << test::run_seed());
    CHECK(e < r.tol);
  }
}

TEST_CASE("PC with no corrector steps is its predictor, the DDPM sampler, bit for bit", "[cpu][diffusion]") {
  const DiscreteSchedule cos = DiscreteSchedule::cosine();
  const LinearLogSNR vdm;
  const Mixture g = data();
  for (const Schedule* sch : {static_cast<const Schedule*>(&cos), static_cast<const Schedule*>(&vdm)})
    for (VarianceKind var : {VarianceKind::beta_tilde, VarianceKind::beta})
      for (Prediction pred : {Prediction::eps, Prediction::x0, Prediction::v}) {
        Oracle oracle{sch, g, pred};
        SamplerOptions o;
        o.shape = Shape{64, g.D()};
        o.seed = test::next_seed();
        o.steps = 25;
        o.prediction = pred;
        o.variance = var;
        o.clip_x0 = pred == Prediction::x0;
        o.corrector_steps = 0;
        int calls = 0;
        o.callback = [&](int, int, const Tensor&, const Tensor&) { ++calls; };
        const Tensor a = sample_pc(*sch, oracle.fn(), o), b = sample_ddpm(*sch, oracle.fn(), o);
        INFO(sch->name() << ", prediction " << to_string(pred));
        CHECK(same_bits(a, b));
        CHECK(calls == 2 * 25);
      }
}

TEST_CASE("the Langevin corrector lowers the error at a fixed number of predictor steps", "[cpu][diffusion]") {
  // DDPM ancestral steps on a coarse grid leave a distribution error that Langevin steps at each
  // level, with the exact score, pull back towards q_t.
  const DiscreteSchedule lin = DiscreteSchedule::linear();
  const Mixture g = data();
  const int64_t B = 40000;  // sampling error ~0.008
  const Tensor z1 = exact_z1(lin, g, B, test::next_seed());
  const uint64_t seed = test::next_seed();
  for (int steps : {10, 20}) {
    std::vector<double> err;
    for (int n : {0, 1, 2}) {
      Oracle oracle{&lin, g};
      SamplerOptions o;
      o.shape = Shape{B, g.D()};
      o.seed = seed;
      o.steps = steps;
      o.corrector_steps = n;
      o.z_T = z1;
      err.push_back(w2_error(sample_pc(lin, oracle.fn(), o), g));
    }
    INFO(steps << " predictor steps: W2 with 0, 1, 2 corrector steps " << err[0] << ", " << err[1] << ", " << err[2]
               << ", seed " << test::run_seed());
    CHECK(err[1] < 0.8 * err[0]);
    CHECK(err[2] < err[1]);
  }
}

TEST_CASE("langevin and pc: same seed, same samples; guidance as combining by hand", "[cpu][diffusion]") {
  const DiscreteSchedule sch = DiscreteSchedule::linear();
  // Label 0: N(0.5, 0.3^2); label 1: N(-0.5, 0.3^2); the null label 2: the even mixture.
  Mixture c0 = Mixture::gaussian({0.5}, {0.3}), c1 = Mixture::gaussian({-0.5}, {0.3});
  Mixture cn{{0.5, 0.5}, {{0.5}, {-0.5}}, {{0.3}, {0.3}}};
  Oracle o0{&sch, c0}, o1{&sch, c1}, on{&sch, cn};
  int64_t rows = 0;
  Denoiser f = [&](const Tensor& z, const Tensor& t, const Tensor& y) {
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
  o.corrector_steps = 2;
  o.labels = Tensor::from_vector_i64({0, 1, 0, 1, 1, 0}, {B});
  o.guidance.cfg_scale = 3.0;
  o.guidance.null_labels = Tensor::from_vector_i64(std::vector<int64_t>(B, 2), {B});
  Denoiser manual = [&](const Tensor& z, const Tensor& t, const Tensor& y) {
    Tensor c = f(z, t, y), u = f(z, t, o.guidance.null_labels);
    Tensor out = Tensor::empty(z.shape());
    for (int64_t i = 0; i < z.numel(); ++i) out.data<float>()[i] = 4.f * c.data<float>()[i] - 3.f * u.data<float>()[i];
    return out;
  };
  for (SamplerKind kind : {SamplerKind::langevin, SamplerKind::pc}) {
    INFO(enum_name(kind));
    rows = 0;
    const Tensor guided = sample(kind, sch, f, o);
    const int calls = kind == SamplerKind::pc ? 20 * 3 : 20 * 2 + 1;
    CHECK(rows == calls * 2 * B);  // one 2B call per model evaluation
    CHECK(same_bits(guided, sample(kind, sch, f, o)));
    SamplerOptions o2 = o;
    o2.guidance = Guidance{};
    CHECK(test::allclose(guided, sample(kind, sch, manual, o2), 1e-5, 1e-6));
    SamplerOptions o3 = o;
    o3.seed = o.seed + 1;
    CHECK_FALSE(test::allclose(guided, sample(kind, sch, f, o3), 1e-3, 1e-3));
  }
}

TEST_CASE("langevin and pc refuse settings they cannot run", "[cpu][diffusion]") {
  const DiscreteSchedule sch = DiscreteSchedule::linear();
  Oracle oracle{&sch, data()};
  SamplerOptions o;
  o.shape = Shape{4, 3};
  o.corrector_steps = 0;
  CHECK_THROWS_WITH(sample_langevin(sch, oracle.fn(), o), Catch::Contains("corrector steps = 0"));
  o.corrector_steps = -1;
  CHECK_THROWS_WITH(sample_pc(sch, oracle.fn(), o), Catch::Contains("corrector steps = -1"));
  o.corrector_steps = 1;
  o.snr = 0;
  CHECK_THROWS_WITH(sample_pc(sch, oracle.fn(), o), Catch::Contains("snr"));
  CHECK(parse_sampler("pc") == SamplerKind::pc);
  CHECK(parse_sampler("langevin") == SamplerKind::langevin);
  CHECK_THROWS_WITH(parse_sampler("ald"), Catch::Contains("langevin or pc"));
}

TEST_CASE("Langevin corrector: distribution error at equal model calls", "[.langevin-table]") {
  const DiscreteSchedule lin = DiscreteSchedule::linear(), cos = DiscreteSchedule::cosine();
  const Mixture g = data();
  const int64_t B = 50000;
  const uint64_t seed = 20240601;
  std::printf("sampling error floor sqrt(1.5 sum s^2 / B) = %.4f\n", std::sqrt(1.5 * (0.09 + 0.36 + 1.0) / B));
  std::printf("| schedule | calls | DDPM beta_tilde | PC 1 | PC 2 | DDPM beta | PC 1, beta | ALD 5, r 0.16 | "
              "ALD 10, r 0.32 |\n");
  for (const DiscreteSchedule* sch : {&lin, &cos}) {
    const Tensor z1 = exact_z1(*sch, g, B, seed);
    for (int calls : {20, 50, 100, 200, 500}) {
      auto run = [&](SamplerKind kind, int steps, int n, double r, VarianceKind var, Spacing sp) {
        Oracle oracle{sch, g};
        SamplerOptions o;
        o.shape = Shape{B, g.D()};
        o.seed = seed + 1;
        o.steps = steps;
        o.corrector_steps = n;
        o.snr = r;
        o.variance = var;
        o.spacing = sp;
        o.z_T = z1;
        const double e = w2_error(sample(kind, *sch, oracle.fn(), o), g);
        char buf[64];
        if (oracle.calls == calls) std::snprintf(buf, sizeof buf, "%.3g", e);
        else std::snprintf(buf, sizeof buf, "%.3g (%d)", e, oracle.calls);
        return std::string(buf);
      };
      const VarianceKind bt = VarianceKind::beta_tilde, be = VarianceKind::beta;
      std::printf("| %s | %d | %s | %s | %s | %s | %s | %s | %s |\n", sch->name().c_str(), calls,
                  run(SamplerKind::pc, calls, 0, 0.16, bt, Spacing::linspace).c_str(),
                  run(SamplerKind::pc, calls / 2, 1, 0.16, bt, Spacing::linspace).c_str(),
                  run(SamplerKind::pc, calls / 3, 2, 0.16, bt, Spacing::linspace).c_str(),
                  run(SamplerKind::pc, calls, 0, 0.16, be, Spacing::linspace).c_str(),
                  run(SamplerKind::pc, calls / 2, 1, 0.16, be, Spacing::linspace).c_str(),
                  run(SamplerKind::langevin, calls / 5, 5, 0.16, bt, Spacing::logsnr).c_str(),
                  run(SamplerKind::langevin, calls / 10, 10, 0.32, bt, Spacing::logsnr).c_str());
      std::fflush(stdout);
    }
  }
}
