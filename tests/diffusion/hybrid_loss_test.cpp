// The hybrid objective of improved DDPM (models/diffusion/hybrid_loss.h): the VLB op's analytic
// gradient in the raw variance channels against finite differences, its forward against
// objective.h's vlb_term, and the stop-gradient that keeps the VLB out of the eps channels.
#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>

#include "autograd/elementwise.h"
#include "autograd/gradcheck.h"
#include "autograd/linalg.h"
#include "core/philox.h"
#include "models/diffusion/hybrid_loss.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::diffusion;

namespace {

// One training example as the trainer forms it: x0 on the 256 data levels (both end bins
// included), x_t = alpha x0 + sigma eps at each sample's step, a network eps prediction that is
// off by 0.3 eps-units (at t = 0 that puts x0_hat within a bin of x0, where the decoder's mass is
// far above its 1e-12 clamp), and raw variance values in [-1.2, 1.2] (the network's output is not
// clamped to [-1, 1]).
struct Problem {
  Tensor x0, xt, eps, pred, raw;
};

Problem make_problem(const DiscreteSchedule& s, const Shape& shape, const std::vector<int>& steps) {
  const int64_t B = shape[0];
  Problem p;
  p.x0 = test::random_tensor(shape);
  float* x = p.x0.data<float>();
  for (int64_t j = 0; j < p.x0.numel(); ++j) x[j] = std::round((x[j] + 1.f) * 127.5f) / 127.5f - 1.f;
  x[0] = -1.f;
  x[p.x0.numel() - 1] = 1.f;
  p.eps = test::random_normal(shape);
  std::vector<double> a(B), sg(B);
  for (int64_t b = 0; b < B; ++b) {
    a[b] = std::sqrt(s.alphas_cumprod()[steps[b]]);
    sg[b] = std::sqrt(1.0 - s.alphas_cumprod()[steps[b]]);
  }
  p.xt = q_sample(p.x0, p.eps, a, sg);
  p.pred = p.eps.clone();
  const Tensor n = test::random_normal(shape);
  for (int64_t j = 0; j < p.pred.numel(); ++j) p.pred.data<float>()[j] += 0.3f * n.data<float>()[j];
  p.raw = test::random_tensor(shape, -1.2f, 1.2f);
  return p;
}

Shape random_shape(int64_t B) {
  const uint64_t seed = test::next_seed();
  auto pick = [&](uint64_t i, int lo, int hi) {
    return static_cast<int64_t>(lo + std::min(hi - lo, static_cast<int>(philox_uniform(seed, 0, i) * (hi - lo + 1))));
  };
  // At least 4 elements a sample: one element's gradient can sit at a zero of the KL's derivative
  // by chance (a seed gave 1e-5 at [1, 1, 1, 1]), four independent ones all near it cannot.
  return Shape{B, pick(0, 2, 4), pick(1, 2, 4), pick(2, 1, 3)};
}

}  // namespace

TEST_CASE("learned_variance_vlb: gradcheck in the raw variance, t = 0 and t > 0, random shapes, batch 1",
          "[cpu][diffusion][autograd]") {
  // What is checked is each sample's term times the constant N ln 2 / (d log Sigma/dr), so the
  // gradient is in natural units, d(nats of one element)/d log Sigma (dKL/d log Sigma for t > 0,
  // -d log p/d log Sigma of the decoder at t = 0), and the step h in r moves log Sigma by 1e-6 at
  // most. Without that, late steps pass on the absolute floor: beta~_t -> beta_t as t -> T and
  // d log Sigma/dr = (log beta_t - log beta~_t)/2 falls to 4e-7 at T - 1 on the linear schedule.
  //
  // Tolerance 1e-8 abs (or 100 eps |L| / h where the terms are large) + 1e-6 rel (10x tighter
  // than the gradcheck default): the op is double
  // throughout in the variance (the mean is a constant of the perturbation, so its f32 rounding
  // does not enter the difference). Central differences then err by the truncation h^2 f'''/6 of
  // a sum of exponentials and Gaussian-CDF logs of log Sigma, ~1e-13 relative, and by rounding,
  // 1e-16 |L| / h: ~1e-10 relative for the KL terms and ~1e-9 absolute for the decoder's log of an
  // erfc difference (relative accuracy ~1e-15). Both far inside the bound; a wrong rule (a missing
  // 1/2, the wrong edge's sign in the decoder) is off by O(1). Each case also requires some
  // gradient of at least 1e-4 in these units, so the floor is never what passes it.
  ag::GradcheckOptions opt;
  opt.atol = 1e-8;
  opt.rtol = 1e-6;
  for (const DiscreteSchedule& s : {DiscreteSchedule::linear(1000), DiscreteSchedule::cosine(100)}) {
    const int T = s.T();
    // One h serves a whole batch, so a batch mixes steps of similar d log Sigma/dr only. The steps
    // stop at T/2: towards T, beta~_t -> beta_t, so log Sigma hardly depends on r and the gradient
    // even in natural units, (1 - e^{lv1 - lv2} - d^2 e^{-lv2})/2, falls to ~1e-6 at T - 1, near
    // the ~1e-8 floor that the KL's cancellation (-1 + lv2 - lv1 + e^{lv1 - lv2}) leaves central
    // differences. The rule there is the same product as at T/2.
    const std::vector<std::vector<int>> step_sets = {{0},       {1},            {T / 3},    {T / 2},
                                                     {0, 1, 0}, {T / 3, T / 2}, {5, 8, 6}};
    for (const std::vector<int>& steps : step_sets) {
      const int64_t B = static_cast<int64_t>(steps.size());
      const Shape shape = random_shape(B);
      INFO("T " << T << " shape " << shape.str() << " first step " << steps[0] << " (seed " << test::run_seed() << ")");
      const Problem p = make_problem(s, shape, steps);
      std::vector<float> k(B);
      double smallest = 1;
      for (int64_t b = 0; b < B; ++b) {
        const int i = steps[b];
        const double dlv_dr = 0.5 * (std::log(s.betas()[i]) - s.posterior_log_variance_clipped()[i]);
        k[b] = static_cast<float>(static_cast<double>(shape.numel() / B) * std::numbers::ln2 / dlv_dr);
        smallest = std::min(smallest, dlv_dr);
      }
      const Tensor scale = Tensor::from_vector(k, {B}).to(DType::f64);
      opt.h = 1e-6 / smallest;
      auto f = [&](const std::vector<ag::Var>& v) {
        return ag::mul(learned_variance_vlb(s, steps, p.x0, p.xt, p.pred, v[0], Prediction::eps), ag::Var(scale));
      };
      {
        ag::Var raw(p.raw.to(DType::f64), true);
        ag::backward(ag::sum_all(f({raw})));
        double biggest = 0;
        for (double g : test::f64_values(raw.grad())) biggest = std::max(biggest, std::fabs(g));
        CHECK(biggest > 1e-4);
      }
      // The rounding floor of central differences, eps |L| / h, grows with the terms' size; late
      // steps of the cosine schedule (alpha ~ 0, an x0_hat far off) have terms of 1e4 nats.
      double size = 0;
      for (double y : test::f64_values(f({ag::Var(p.raw.to(DType::f64))}).value())) size += std::fabs(y);
      opt.atol = std::max(1e-8, 100 * 2.2e-16 * size / opt.h);
      const ag::GradcheckResult r = ag::gradcheck(f, {p.raw}, opt);
      INFO("atol " << opt.atol << " h " << opt.h << ": " << r.report);
      CHECK(r.ok);
    }
  }
}

TEST_CASE("learned_variance_vlb: the forward is vlb_term with the learned variance, in bits per dim",
          "[cpu][diffusion]") {
  const DiscreteSchedule s = DiscreteSchedule::linear(1000);
  const std::vector<int> steps = {0, 1, 250, 999};
  const Shape shape{4, 3, 2, 2};
  const Problem p = make_problem(s, shape, steps);
  const Tensor out = ag::concat_last({ag::Var(p.pred), ag::Var(p.raw)}).value();
  const Tensor got = learned_variance_vlb(s, steps, p.x0, p.xt, p.pred, ag::Var(p.raw)).value();
  REQUIRE(got.shape() == Shape{4});
  const double N = 12;
  for (int b = 0; b < 4; ++b) {
    const double want = vlb_term(s, steps[b], p.x0.slice(b, b + 1), p.xt.slice(b, b + 1), out.slice(b, b + 1),
                                 Prediction::eps, VarianceKind::learned)
                            .item() /
                        (N * std::numbers::ln2);
    INFO("step " << steps[b]);
    // vlb_term rounds log Sigma to f32 before the KL (objective.h's tensors are f32): 6e-8 of
    // |log Sigma| <= 10 per element, times a derivative dKL/d log Sigma of O(1), a few 1e-7 nats an
    // element. Where the term itself is that small (a variance near the posterior's) only the
    // absolute bound means anything: 1e-6 bits/dim.
    CHECK(std::fabs(got.data<float>()[b] - want) <= 1e-6 + 1e-6 * std::fabs(want));
  }
}

TEST_CASE("hybrid_loss: the VLB reaches only the variance channels, L_simple only the eps channels",
          "[cpu][diffusion][autograd]") {
  const DiscreteSchedule s = DiscreteSchedule::linear(1000);
  const std::vector<int> steps = {0, 7, 500};
  const Shape shape{3, 4, 4, 2};
  const int64_t C = 2;
  const Problem p = make_problem(s, shape, steps);
  ag::Var out(ag::concat_last({ag::Var(p.pred), ag::Var(p.raw)}).value(), true);
  const Tensor w = Tensor::full({3}, 1.0);

  auto grads = [&](bool vlb_part) {
    out.zero_grad();
    HybridLoss h = hybrid_loss(s, steps, p.x0, p.xt, p.eps, out, w);
    ag::backward(vlb_part ? h.vlb : h.mse);
    return out.grad().to_vector();
  };
  auto nonzero_in = [&](const std::vector<float>& g, bool variance) {
    int64_t n = 0;
    for (size_t k = 0; k < g.size(); ++k)
      if ((static_cast<int64_t>(k) % (2 * C) >= C) == variance && g[k] != 0.f) ++n;
    return n;
  };
  const std::vector<float> gv = grads(true), gm = grads(false);
  const int64_t per_half = shape.numel();
  CHECK(nonzero_in(gv, /*variance=*/false) == 0);  // the mean is detached
  CHECK(nonzero_in(gv, true) == per_half);
  CHECK(nonzero_in(gm, false) == per_half);
  CHECK(nonzero_in(gm, true) == 0);

  // loss = mse + lambda T vlb, lambda = 0.001 (improved DDPM's RESCALED_MSE at any T).
  ag::NoGrad ng;
  HybridLoss h = hybrid_loss(s, steps, p.x0, p.xt, p.eps, out, w);
  CHECK(h.loss.value().item() == Approx(h.mse.value().item() + 1.0 * h.vlb.value().item()).epsilon(1e-6));
  CHECK(std::isfinite(h.vlb.value().item()));
  CHECK(h.vlb.value().item() > 0);
  // With the right eps the mse part vanishes.
  ag::Var exact(ag::concat_last({ag::Var(p.eps), ag::Var(p.raw)}).value());
  CHECK(hybrid_loss(s, steps, p.x0, p.xt, p.eps, exact, w).mse.value().item() == 0.0);
}

TEST_CASE("hybrid_loss: refuses a network output without the variance channels", "[cpu][diffusion]") {
  const DiscreteSchedule s = DiscreteSchedule::linear(1000);
  const Problem p = make_problem(s, {1, 2, 2, 1}, {3});
  CHECK_THROWS_WITH(hybrid_loss(s, {3}, p.x0, p.xt, p.eps, ag::Var(p.pred), Tensor::full({1}, 1.0)),
                    Catch::Contains("2C channels"));
}
