// autograd/elementwise.h: every backward rule against central finite differences in f64
// (autograd/gradcheck.h; default tolerance 1e-6 abs + 1e-5 rel, argued there). Inputs stay away
// from kinks and poles: log and sqrt on [0.2, 2], divisors on [0.5, 2]. Broadcasting cases cover
// both-sided broadcasting, bias, per-sample scalars and batch 1. cross_entropy and embedding are
// gradchecked from the op table (tests/kernels/op_table.cpp).
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "autograd/elementwise.h"
#include "autograd/gradcheck.h"
#include "core/philox.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::ag;
using test::random_tensor;

namespace {

void expect_ok(const std::function<Var(const std::vector<Var>&)>& f, const std::vector<Tensor>& in,
               const char* what) {
  GradcheckResult r = gradcheck(f, in);
  INFO(what << ": " << r.report << " (seed " << test::run_seed() << ")");
  CHECK(r.ok);
}

}  // namespace

TEST_CASE("binary ops with broadcasting: gradcheck", "[cpu][autograd]") {
  struct Case {
    Shape a, b;
  };
  const Case cases[] = {{{2, 3, 4}, {2, 3, 4}}, {{2, 3, 5}, {5}},     {{3, 2, 2, 3}, {3, 1, 1, 1}},
                        {{3, 1, 4}, {1, 2, 4}}, {{4, 1}, {1, 3}},     {{1}, {2, 3}},
                        {{1, 2, 2, 3}, {3}},    {{3}, {2, 2, 3}}};
  for (const Case& c : cases) {
    INFO(c.a.str() << " . " << c.b.str());
    expect_ok([](const std::vector<Var>& v) { return add(v[0], v[1]); }, {random_tensor(c.a), random_tensor(c.b)}, "add");
    expect_ok([](const std::vector<Var>& v) { return sub(v[0], v[1]); }, {random_tensor(c.a), random_tensor(c.b)}, "sub");
    expect_ok([](const std::vector<Var>& v) { return mul(v[0], v[1]); }, {random_tensor(c.a), random_tensor(c.b)}, "mul");
    expect_ok([](const std::vector<Var>& v) { return div(v[0], v[1]); },
              {random_tensor(c.a), random_tensor(c.b, 0.5f, 2.f)}, "div");
  }
  // The same variable on both sides: two gradients accumulate into one.
  expect_ok([](const std::vector<Var>& v) { return add(v[0], v[0]); }, {random_tensor({3, 2})}, "x + x");
  expect_ok([](const std::vector<Var>& v) { return mul(v[0], v[0]); }, {random_tensor({3, 2})}, "x * x");
  expect_ok([](const std::vector<Var>& v) { return sub(v[0], v[0]); }, {random_tensor({3, 2})}, "x - x");
}

TEST_CASE("x + x gives the variable its own gradient buffer", "[cpu][autograd]") {
  Var x(random_tensor({4}).to(DType::f64), true), y(random_tensor({4}).to(DType::f64), true);
  backward(sum_all(add(x, y)));
  CHECK_FALSE(x.grad().same_storage(y.grad()));  // an in-place update of one must not touch the other
}

TEST_CASE("unary and scalar ops: gradcheck", "[cpu][autograd]") {
  using Fn = Var (*)(const Var&);
  struct U {
    const char* name;
    Fn f;
    float lo, hi;
  };
  const U ops[] = {{"silu", silu, -4, 4},       {"sigmoid", sigmoid, -4, 4}, {"softplus", softplus, -4, 4},
                   {"exp", ag::exp, -2, 2},     {"log", ag::log, 0.2f, 2},   {"tanh", ag::tanh, -2, 2},
                   {"square", square, -2, 2},   {"sqrt", ag::sqrt, 0.2f, 2}, {"neg", neg, -2, 2}};
  for (const U& u : ops)
    for (const Shape& s : {Shape{1}, Shape{2, 3, 5}}) {
      INFO(s.str());
      expect_ok([&](const std::vector<Var>& v) { return u.f(v[0]); }, {random_tensor(s, u.lo, u.hi)}, u.name);
    }
  expect_ok([](const std::vector<Var>& v) { return add_scalar(v[0], 2.5); }, {random_tensor({2, 3})}, "add_scalar");
  expect_ok([](const std::vector<Var>& v) { return mul_scalar(v[0], -1.5); }, {random_tensor({2, 3})}, "mul_scalar");
}

TEST_CASE("sum, mean, sum_all, mean_all: gradcheck", "[cpu][autograd]") {
  const std::vector<std::vector<int>> axes_sets = {{}, {0}, {-1}, {1, 3}, {0, 1, 2, 3}, {2}};
  for (const auto& axes : axes_sets)
    for (bool keep : {false, true}) {
      INFO("axes " << axes.size() << " keepdim " << keep);
      expect_ok([&](const std::vector<Var>& v) { return sum(v[0], axes, keep); }, {random_tensor({2, 3, 1, 5})}, "sum");
      expect_ok([&](const std::vector<Var>& v) { return mean(v[0], axes, keep); }, {random_tensor({2, 3, 1, 5})}, "mean");
    }
  expect_ok([](const std::vector<Var>& v) { return sum_all(v[0]); }, {random_tensor({3, 4})}, "sum_all");
  expect_ok([](const std::vector<Var>& v) { return mean_all(v[0]); }, {random_tensor({3, 4})}, "mean_all");
  CHECK(sum_all(Var(random_tensor({3, 4}))).shape() == Shape({1}));
}

TEST_CASE("losses: values and gradcheck", "[cpu][autograd]") {
  for (const Shape& s : {Shape{1, 3}, Shape{3, 2, 2, 3}, Shape{4}}) {
    INFO(s.str());
    const int64_t B = s[0];
    expect_ok([](const std::vector<Var>& v) { return mse(v[0], v[1]); }, {random_tensor(s), random_tensor(s)}, "mse");
    expect_ok([](const std::vector<Var>& v) { return per_sample_mse(v[0], v[1]); },
              {random_tensor(s), random_tensor(s)}, "per_sample_mse");
    Tensor w = random_tensor({B}, 0.f, 2.f);
    expect_ok([&](const std::vector<Var>& v) { return weighted_mse(v[0], v[1], w); },
              {random_tensor(s), random_tensor(s)}, "weighted_mse");

    // Values against a direct loop (f32 through the f64 view of the same numbers).
    Tensor a = random_tensor(s).to(DType::f64), b = random_tensor(s).to(DType::f64);
    const std::vector<float> av = a.to_vector(), bv = b.to_vector(), wv = w.to_vector();
    const int64_t N = s.numel() / B;
    double total = 0, weighted = 0;
    std::vector<float> ps(static_cast<size_t>(B));
    for (int64_t i = 0; i < B; ++i) {
      double t = 0;
      for (int64_t j = 0; j < N; ++j) t += (double(av[i * N + j]) - bv[i * N + j]) * (double(av[i * N + j]) - bv[i * N + j]);
      total += t;
      ps[i] = static_cast<float>(t / N);
      weighted += wv[i] * t / N;
    }
    CHECK(mse(Var(a), Var(b)).value().item() == Approx(total / s.numel()).epsilon(1e-6));
    CHECK(per_sample_mse(Var(a), Var(b)).shape() == Shape({B}));
    CHECK(test::allclose(per_sample_mse(Var(a), Var(b)).value().to_vector(), ps, 1e-6, 1e-9));
    CHECK(weighted_mse(Var(a), Var(b), w).value().item() == Approx(weighted / B).epsilon(1e-6));
  }
}

TEST_CASE("dropout: Philox mask, identity when off, gradcheck", "[cpu][autograd]") {
  const uint64_t seed = test::next_seed();
  Var x(random_tensor({3, 7}, 0.5f, 1.5f), true);
  CHECK(dropout(x, 0.3f, seed, 0, false).impl() == x.impl());  // eval: the variable itself
  CHECK(dropout(x, 0.f, seed, 0, true).impl() == x.impl());
  Var y = dropout(x, 0.3f, seed, 5, true);
  const std::vector<float> xv = x.value().to_vector(), yv = y.value().to_vector();
  bool ok = true;
  for (size_t i = 0; i < xv.size(); ++i) {
    const bool keep = philox_uniform(seed, 5, i) >= 0.3f;
    ok = ok && yv[i] == (keep ? xv[i] * static_cast<float>(1.0 / 0.7) : 0.f);
  }
  CHECK(ok);
  CHECK(dropout(x, 0.3f, seed, 5, true).value().to_vector() == yv);  // reproducible
  clear_tape();
  expect_ok([&](const std::vector<Var>& v) { return dropout(v[0], 0.4f, seed, 3, true); }, {random_tensor({2, 9})},
            "dropout");
}

TEST_CASE("embedding: range errors", "[cpu][autograd]") {
  // Its gradcheck (repeated ids, batch 1) is the op table's (tests/kernels/op_table.cpp).
  CHECK_THROWS_AS(embedding(Tensor::from_vector_i64({5}, {1}), Var(random_tensor({5, 3}), true)), Error);
  clear_tape();
}

TEST_CASE("positive_linear: softplus weights, values and gradcheck", "[cpu][autograd]") {
  for (const Shape& xs : {Shape{1, 3}, Shape{4, 3}, Shape{2, 5, 3}}) {
    INFO(xs.str());
    const int64_t In = 3, Out = 2, R = xs.numel() / In;
    Tensor x = random_tensor(xs).to(DType::f64), w = random_tensor({Out, In}, -2, 2).to(DType::f64),
           b = random_tensor({Out}).to(DType::f64);
    Var y = positive_linear(Var(x), Var(w), Var(b));
    std::vector<int64_t> ys = xs.vec();
    ys.back() = Out;
    CHECK(y.shape() == Shape(ys));
    const double *px = x.data<double>(), *pw = w.data<double>(), *pb = b.data<double>();
    const double* py = y.value().data<double>();
    bool ok = true;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t o = 0; o < Out; ++o) {
        double t = pb[o];
        for (int64_t i = 0; i < In; ++i) t += px[r * In + i] * std::log1p(std::exp(pw[o * In + i]));
        ok = ok && std::fabs(py[r * Out + o] - t) <= 1e-12 * (1 + std::fabs(t));  // double vs double
      }
    CHECK(ok);
    expect_ok([](const std::vector<Var>& v) { return positive_linear(v[0], v[1], v[2]); },
              {random_tensor(xs), random_tensor({Out, In}, -2, 2), random_tensor({Out})}, "positive_linear");
    expect_ok([](const std::vector<Var>& v) { return positive_linear(v[0], v[1]); },
              {random_tensor(xs), random_tensor({Out, In}, -2, 2)}, "positive_linear, no bias");
  }
  CHECK_THROWS_AS(positive_linear(Var(random_tensor({2, 3})), Var(random_tensor({2, 4}))), Error);
}
