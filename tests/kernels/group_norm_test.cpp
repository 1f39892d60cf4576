// GroupNorm (+ AdaGN scale/shift, + SiLU): the fast cpu path against the reference loops.
#include <catch2/catch.hpp>

#include <cmath>

#include "kernels/group_norm.h"
#include "tests/test_util.h"

using namespace diffuse;
using kernels::GroupNormGrads;
using kernels::GroupNormOptions;

namespace {

struct Case {
  Shape x;
  int groups;
};

// Odd sizes (C=6 with G=3, T=5), batch 1, (B,C) with one position, one channel per group, one group.
const Case kCases[] = {{{2, 4, 4, 8}, 4}, {{1, 5, 6}, 3}, {{3, 8}, 2}, {{2, 3, 3, 32}, 32}, {{2, 7, 12}, 1}};

// Activations with a non-zero mean per channel, so centring matters.
Tensor activations(const Shape& s) {
  Tensor x = test::random_normal(s);
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] = 1.5f * p[i] + 0.7f;
  return x;
}

Tensor maybe(bool on, const Shape& s, DType t) { return on ? test::random_tensor(s).to(t) : Tensor(); }

Tensor poisoned(const Shape& s, DType t) {
  Tensor out = Tensor::empty(s, t);
  out.poison_();
  return out;
}

Tensor poisoned_like(const Tensor& t) { return t.defined() ? poisoned(t.shape(), t.dtype()) : Tensor(); }

// Runs the fast path and the reference on the same inputs; checks every output.
void check_case(const Case& c, DType dt, bool gamma_on, bool beta_on, bool ss_on, bool silu, double rtol,
                double atol) {
  const int64_t B = c.x[0], C = c.x[-1];
  Tensor x = activations(c.x).to(dt), dy = test::random_tensor(c.x).to(dt);
  Tensor gamma = maybe(gamma_on, {C}, dt), beta = maybe(beta_on, {C}, dt);
  Tensor scale = maybe(ss_on, {B, C}, dt), shift = maybe(ss_on, {B, C}, dt);
  GroupNormOptions opt{c.groups, 1e-5f, silu};
  CAPTURE(c.x.str(), c.groups, dt == DType::f64, gamma_on, beta_on, ss_on, silu);

  Tensor y = poisoned(c.x, dt), mean = poisoned({B, c.groups}, dt), rstd = poisoned({B, c.groups}, dt);
  Tensor yr = poisoned(c.x, dt), meanr = poisoned({B, c.groups}, dt), rstdr = poisoned({B, c.groups}, dt);
  kernels::cpu::group_norm_forward(x, gamma, beta, scale, shift, opt, y, mean, rstd);
  kernels::ref::group_norm_forward(x, gamma, beta, scale, shift, opt, yr, meanr, rstdr);
  INFO("y: " << test::compare(y, yr).str());
  CHECK(test::allclose(y, yr, rtol, atol));
  CHECK(test::allclose(mean, meanr, rtol, atol));
  CHECK(test::allclose(rstd, rstdr, rtol, atol));

  // Both backwards from the same statistics (the reference's), so only the backward differs.
  GroupNormGrads g{poisoned(c.x, dt), poisoned_like(gamma), poisoned_like(beta), poisoned_like(scale),
                   poisoned_like(shift)};
  GroupNormGrads gr{poisoned(c.x, dt), poisoned_like(gamma), poisoned_like(beta), poisoned_like(scale),
                    poisoned_like(shift)};
  kernels::cpu::group_norm_backward(dy, x, meanr, rstdr, gamma, beta, scale, shift, opt, g);
  kernels::ref::group_norm_backward(dy, x, meanr, rstdr, gamma, beta, scale, shift, opt, gr);
  INFO("dx: " << test::compare(g.dx, gr.dx).str());
  CHECK(test::allclose(g.dx, gr.dx, rtol, atol));
  // Parameter gradients are sums over B*N elements: their scale grows with the count.
  const double n = static_cast<double>(x.numel() / C);
  if (gamma_on) CHECK(test::allclose(g.dgamma, gr.dgamma, rtol, atol * n));
  if (beta_on) CHECK(test::allclose(g.dbeta, gr.dbeta, rtol, atol * n));
  if (ss_on) {
    CHECK(test::allclose(g.dscale, gr.dscale, rtol, atol * n));
    CHECK(test::allclose(g.dshift, gr.dshift, rtol, atol * n));
  }
}

}  // namespace

TEST_CASE("group_norm fast path equals the reference, every option", "[cpu][kernels]") {
  for (const Case& c : kCases)
    for (int opts = 0; opts < 16; ++opts) {
      const bool g = opts & 1, b = opts & 2, ss = opts & 4, silu = opts & 8;
      // f64: the same math in a different order; only rounding of ~1e-16 per term separates them,
      // so any algebra slip shows up far above 1e-10.
      check_case(c, DType::f64, g, b, ss, silu, 1e-10, 1e-10);
      // f32: the fast path rounds the statistics to f32 and evaluates each output with ~6 f32
      // operations on values of order 10, against a reference that rounds once: a few 1e-6
      // absolute; 2e-5 leaves 4x margin.
      check_case(c, DType::f32, g, b, ss, silu, 1e-5, 2e-5);
    }
}

TEST_CASE("group_norm statistics stay accurate when the mean dwarfs the spread", "[cpu][kernels]") {
  // var = E[x^2] - mean^2 in f32 would lose every digit here (mean 1e4, std 1e-1); the shifted
  // double sums keep rstd to f32 rounding.
  Tensor x = test::random_normal({2, 8, 8}).to(DType::f64);
  double* p = x.data<double>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] = 1e4 + 0.1 * p[i];
  Tensor xf = x.to(DType::f32);
  GroupNormOptions opt{2, 1e-5f, false};
  auto r = kernels::group_norm_forward(xf, {}, {}, {}, {}, opt);
  auto r64 = kernels::group_norm_forward(x, {}, {}, {}, {}, opt);
  // f32 input rounding alone moves each x by up to 1e4 * 6e-8 = 6e-4, i.e. 6e-3 std: that, not
  // the algorithm, bounds the agreement.
  CHECK(test::allclose(r.rstd, r64.rstd.to(DType::f32), 2e-2, 0));
  CHECK(test::allclose(r.y, r64.y.to(DType::f32), 0, 5e-2));
  // In f64 the fast path matches the reference to rounding.
  Tensor yr = Tensor::empty(x.shape(), DType::f64), mr = Tensor::empty({2, 2}, DType::f64),
         rr = Tensor::empty({2, 2}, DType::f64);
  kernels::ref::group_norm_forward(x, {}, {}, {}, {}, opt, yr, mr, rr);
  CHECK(test::allclose(r64.rstd, rr, 1e-9, 0));
  CHECK(test::allclose(r64.y, yr, 0, 1e-8));
}

TEST_CASE("group_norm output has zero mean and unit variance per group", "[cpu][kernels]") {
  Tensor x = activations({3, 4, 4, 12});
  auto r = kernels::group_norm_forward(x, {}, {}, {}, {}, GroupNormOptions{3, 0.f, false});
  std::vector<float> y = r.y.to_vector();
  for (int b = 0; b < 3; ++b)
    for (int g = 0; g < 3; ++g) {
      double s = 0, ss = 0;
      for (int n = 0; n < 16; ++n)
        for (int c = g * 4; c < g * 4 + 4; ++c) {
          double v = y[(b * 16 + n) * 12 + c];
          s += v;
          ss += v * v;
        }
      CHECK(std::fabs(s / 64) < 1e-5);        // 64 terms of order 1 rounded in f32
      CHECK(std::fabs(ss / 64 - 1) < 1e-5);
    }
}

TEST_CASE("group_norm rejects bad shapes", "[cpu][kernels]") {
  Tensor x = test::random_tensor({2, 3, 6});
  CHECK_THROWS_AS(kernels::group_norm_forward(x, {}, {}, {}, {}, GroupNormOptions{4, 1e-5f, false}), Error);
  CHECK_THROWS_AS(kernels::group_norm_forward(x, test::random_tensor({5}), {}, {}, {}, GroupNormOptions{3}), Error);
  CHECK_THROWS_AS(kernels::group_norm_forward(x, {}, {}, test::random_tensor({1, 6}), {}, GroupNormOptions{3}), Error);
}
