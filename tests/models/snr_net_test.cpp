// The VDM learned schedule: monotone, pinned endpoints, gamma'(t) exact, gradients in f64.
#include <catch2/catch.hpp>

#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/linalg.h"
#include "models/nn/snr_net.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::nn;

TEST_CASE("SNRNet: increasing, pinned at gamma_min and gamma_max, gamma' matches finite differences",
          "[cpu][models]") {
  SNRNet net(64, -13.3f, 5.f, test::next_seed());
  net.to(DType::f64);  // so the finite differences below are not drowned by f32 rounding
  CHECK(net.gamma(0.0) == Approx(-13.3).margin(1e-9));
  CHECK(net.gamma(1.0) == Approx(5.0).margin(1e-9));
  double prev = -1e9;
  for (int i = 0; i <= 50; ++i) {
    const double t = i / 50.0;
    const double g = net.gamma(t);
    CHECK(g > prev);
    prev = g;
    // Forward mode against a central difference (h = 1e-5 in double: error ~1e-9 relative).
    const double h = 1e-5;
    const double tl = std::max(0.0, t - h), tr = std::min(1.0, t + h);
    const double fd = (net.gamma(tr) - net.gamma(tl)) / (tr - tl);
    CHECK(net.dgamma_dt(t) == Approx(fd).epsilon(1e-5));
    CHECK(net.dgamma_dt(t) > 0);
  }
  // Batched forward agrees with the scalar path, and in f32 too.
  net.to(DType::f32);
  auto out = net.forward(Tensor::from_vector({0.f, 0.25f, 1.f}, {3}));
  CHECK(out.gamma.shape() == Shape{3});
  auto g = out.gamma.value().to_vector();
  CHECK(g[0] == Approx(-13.3).margin(1e-4));
  CHECK(g[2] == Approx(5.0).margin(1e-4));
  CHECK(g[1] == Approx(net.gamma(0.25)).margin(1e-4));
  ag::clear_tape();
}

TEST_CASE("SNRNet: gradients of gamma and gamma' with respect to every parameter (f64)", "[cpu][models]") {
  SNRNet net(6, -10.f, 4.f, test::next_seed());
  net.to(DType::f64);
  Tensor t = test::random_tensor({5}, 0.f, 1.f).to(DType::f64);
  std::vector<Tensor> inputs;
  for (auto& [n, v] : net.named_parameters()) inputs.push_back(v.value().clone());
  auto f = [&](const std::vector<ag::Var>& v) {
    net.bind_parameters(v);
    auto o = net.forward(t);
    return ag::concat_last({ag::reshape(o.gamma, {5, 1}), ag::reshape(o.dgamma, {5, 1})});
  };
  auto r = ag::gradcheck(f, inputs);
  INFO(r.report);
  CHECK(r.ok);
}
