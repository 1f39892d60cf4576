// The VDM training loss (models/diffusion/vdm_loss.h): the decoder op's analytic gradient in
// gamma_0 and the whole loss's gradient in the prediction and in the schedule's values against
// f64 central differences; each term's forward against likelihood.h / objective.h, which
// `diffuse eval` uses for the same bound.
#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>

#include "autograd/elementwise.h"
#include "autograd/gradcheck.h"
#include "models/diffusion/likelihood.h"
#include "models/diffusion/objective.h"
#include "models/diffusion/vdm_loss.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::diffusion;

namespace {

// Data on the 256 levels 2k/255 - 1, both ends included.
Tensor levels(const Shape& shape) {
  Tensor x = test::random_tensor(shape);
  float* p = x.data<float>();
  for (int64_t j = 0; j < x.numel(); ++j) p[j] = std::round((p[j] + 1.f) * 127.5f) / 127.5f - 1.f;
  p[0] = -1.f;
  p[x.numel() - 1] = 1.f;
  return x;
}

double at(const Tensor& t, int64_t i) { return t.to(DType::f64).data<double>()[i]; }

}  // namespace

TEST_CASE("vdm_reconstruction_nll: gradcheck in gamma_0 from VDM's -13.3 to 0", "[cpu][diffusion][autograd]") {
  // The op is double throughout; central differences with h = 1e-6 err by h^2 f''' (the logits
  // scale as e^{-g}, so f''' ~ |L| at unit scale) and by rounding 1e-16 |L| / h ~ 1e-10 |L|: the
  // default tolerance (1e-6 abs + 1e-5 rel) holds them with margin, and a wrong rule (the
  // e^{g/2} eps path through z_0 / alpha_0 left out, a sign) is off by O(1) relative. At each
  // gamma_0 the gradient must also be far from 0, so the absolute floor is not what passes it.
  const Shape shape{3, 4, 4, 2};
  const Tensor x = levels(shape), eps0 = test::random_normal(shape);
  for (double g0 : {-13.3, -9.0, -5.0, -2.0, 0.0}) {
    INFO("gamma_0 = " << g0);
    auto f = [&](const std::vector<ag::Var>& v) { return vdm_reconstruction_nll(x, eps0, v[0]); };
    const ag::GradcheckResult r = ag::gradcheck(f, {Tensor::full({1}, g0, DType::f64)});
    INFO(r.report);
    CHECK(r.ok);
    // Some gradient to check: d L_0 / d gamma_0 summed over the batch.
    ag::Var g(Tensor::full({1}, g0, DType::f64), true);
    ag::backward(ag::sum_all(vdm_reconstruction_nll(x, eps0, g)));
    CHECK(std::fabs(at(g.grad(), 0)) > 1e-3);
  }
}

TEST_CASE("vdm_loss: gradcheck in the prediction, gamma'(t), gamma(0), gamma(1) and, through z_t, gamma(t)",
          "[cpu][diffusion][autograd]") {
  // The loss as the trainer forms it, with a stand-in network eps_hat = tanh(W z_t) elementwise
  // (W fixed), so the path gamma_t -> z_t -> eps_hat is exercised the way the UNet's backward
  // exercises it. Composites of checked primitives plus the decoder op; default tolerance.
  const Shape shape{4, 3, 2, 2};
  const Tensor x = levels(shape), eps = test::random_normal(shape), eps0 = test::random_normal(shape);
  const Tensor w = test::random_tensor(shape, 0.5f, 1.5f).to(DType::f64);
  const Tensor gamma_t = test::random_tensor({4}, -10.f, 4.f), dgamma = test::random_tensor({4}, 5.f, 25.f);
  auto f = [&](const std::vector<ag::Var>& v) {
    ag::Var z = vdm_q_sample(x, eps, v[0]);
    ag::Var eps_hat = ag::tanh(ag::mul(z, ag::Var(w)));
    return vdm_loss(x, eps, eps_hat, v[1], eps0, v[2], v[3]).loss;
  };
  const ag::GradcheckResult r = ag::gradcheck(
      f, {gamma_t, dgamma, Tensor::full({1}, -6.0, DType::f64), Tensor::full({1}, 5.0, DType::f64)});
  INFO(r.report);
  CHECK(r.ok);
  // And in the prediction itself.
  auto g = [&](const std::vector<ag::Var>& v) {
    return vdm_loss(x, eps, v[0], v[1], eps0, ag::Var(Tensor::full({1}, -13.3, DType::f64)),
                    ag::Var(Tensor::full({1}, 5.0, DType::f64)))
        .loss;
  };
  const ag::GradcheckResult r2 = ag::gradcheck(g, {test::random_normal(shape), dgamma});
  INFO(r2.report);
  CHECK(r2.ok);
}

TEST_CASE("vdm_loss: each term equals the bound that eval computes, in bits per dim", "[cpu][diffusion]") {
  const Shape shape{3, 5, 5, 1};
  const int64_t B = 3, N = 25;
  const Tensor x = levels(shape), eps = test::random_normal(shape), eps0 = test::random_normal(shape);
  const Tensor eps_hat = test::random_normal(shape);
  const double g0 = -6.0, g1 = 4.0;
  const std::vector<double> dg = {3.0, 18.3, 40.0};
  const Tensor dgt = Tensor::from_vector({3.f, 18.3f, 40.f}, {3});
  const VdmLoss l = vdm_loss(x, eps, ag::Var(eps_hat), ag::Var(dgt), eps0, ag::Var(Tensor::full({1}, g0)),
                             ag::Var(Tensor::full({1}, g1)));
  const double to_bpd = 1.0 / (N * std::numbers::ln2);
  auto mean = [&](const Tensor& t) {
    double m = 0;
    for (int64_t b = 0; b < B; ++b) m += at(t, b) / B;
    return m;
  };
  // Prior: objective.h's prior_kl on a schedule with gamma(1) = g1. Both f32 at the end; 1e-5
  // relative is f32 rounding of a sum of 25 terms of unit size.
  CHECK(at(l.prior.value(), 0) == Approx(mean(prior_kl(LinearLogSNR(-13.3, g1), x)) * to_bpd).epsilon(1e-5));
  // Decoder: likelihood.h's, which takes z_0 = alpha_0 x + sigma_0 eps_0 in f32 and divides by
  // alpha_0; that rounding moves each logit by about e^{-g0} |u| 1e-7 ~ 1e-4 at g0 = -6 relative
  // to the O(1) terms, hence 1e-4 relative here.
  const double a0 = std::sqrt(sigmoid(-g0)), s0 = std::sqrt(sigmoid(g0));
  const Tensor z0 = q_sample(x, eps0, std::vector<double>(B, a0), std::vector<double>(B, s0));
  CHECK(at(l.reconstruction.value(), 0) ==
        Approx(mean(diffusion::vdm_reconstruction_nll(x, z0, g0)) * to_bpd).epsilon(1e-4));
  // Diffusion term: objective.h's vdm_diffusion_loss; f32 both, 1e-5 relative.
  CHECK(at(l.diffusion.value(), 0) == Approx(mean(diffusion::vdm_diffusion_loss(eps, eps_hat, dg)) * to_bpd).epsilon(1e-5));
  CHECK(at(l.loss.value(), 0) ==
        Approx(at(l.prior.value(), 0) + at(l.reconstruction.value(), 0) + at(l.diffusion.value(), 0)).epsilon(1e-6));
  // vdm_q_sample is q_sample at alpha^2 = sigmoid(-gamma).
  const Tensor gt = Tensor::from_vector({-8.f, 0.5f, 3.f}, {3});
  std::vector<double> a(B), s(B);
  for (int64_t b = 0; b < B; ++b) {
    a[b] = std::sqrt(sigmoid(-at(gt, b)));
    s[b] = std::sqrt(sigmoid(at(gt, b)));
  }
  const Tensor zq = q_sample(x, eps, a, s), zv = vdm_q_sample(x, eps, ag::Var(gt)).value();
  for (int64_t j = 0; j < zq.numel(); ++j) REQUIRE(zv.data<float>()[j] == Approx(zq.data<float>()[j]).margin(1e-6));
  CHECK_THROWS_WITH(vdm_q_sample(x, eps, ag::Var(Tensor::zeros({2}))), Catch::Contains("vdm_q_sample"));
  CHECK_THROWS_WITH(vdm_prior_kl(x, ag::Var(Tensor::zeros({2}))), Catch::Contains("one value"));
}
