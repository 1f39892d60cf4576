// kernels/elementwise.h: the cpu fast path against the reference loops (kernels::ref), on fresh
// random inputs, odd sizes, batch 1, every broadcasting pattern (both-sided included), and sizes
// past the OpenMP threshold (32768). Outputs are poisoned first, so an unwritten element fails.
//
// Tolerances (f32; the reference computes in double and rounds once):
// - add, sub, mul: a float sum or product of inputs in [-1, 1] is exact in double, so both sides
//   round the same real number: bitwise equal; div may differ by double rounding: rtol 2.4e-7 (2 ulp).
// - sum_to / sums: both accumulate in double (different order): the only difference is the last
//   f32 rounding (1 ulp); atol 1e-6 covers results near 0 where the order's 1e-16 errors show.
// - unary: a few f32 library calls and operations (each <= 1-2 ulp) against double: rtol 2e-6;
//   atol 1e-6 for silu' and sigmoid' near their roots and tails, where the value is a difference.
// - f64: the same formulas in double against double: rtol 1e-12, atol 1e-13 (tanh' = 1 - t^2
//   against 1/cosh^2 differs by ~1e-16 absolute, large relative to a tail value of 1e-5).
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "core/philox.h"
#include "core/tensor.h"
#include "kernels/elementwise.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;
using kernels::BinaryOp;
using kernels::UnaryOp;

namespace {

struct Case {
  Shape a, b;
};

// Same shape, b a suffix of a (bias), per-sample scalar, both-sided, batch 1, reversed roles,
// rank mismatch, one element, and large ones that take the OpenMP path.
std::vector<Case> broadcast_cases() {
  return {{{3, 5, 7}, {3, 5, 7}},          {{2, 3, 5, 7}, {7}},          {{3, 4, 5, 6}, {3, 1, 1, 1}},
          {{3, 1, 7}, {1, 5, 7}},          {{4, 1}, {1, 6}},             {{1}, {2, 3}},
          {{5, 1, 3, 1}, {4, 1, 2}},       {{1, 3, 3, 5}, {1, 1, 1, 5}}, {{7}, {2, 3, 5, 7}},
          {{1, 1, 1, 1}, {3, 1, 1, 1}},    {{1}, {1}},                   {{2, 3, 5, 7}, {3, 1, 7}},
          {{2, 128, 129, 3}, {3}},         {{2, 40001}, {2, 1}},         {{64, 1, 601}, {1, 3, 601}},
          {{1, 33000}, {1, 33000}}};
}

Tensor operand(const Shape& s, BinaryOp op, bool divisor) {
  // Divisors in [0.5, 2]: away from 0, so the quotient is well scaled.
  return divisor && op == BinaryOp::div ? random_tensor(s, 0.5f, 2.f) : random_tensor(s);
}

// allclose in the tensors' own precision (test::allclose reads through float, which would hide
// f64 errors below f32 rounding and turn a rounding-boundary tie into a 1-ulp failure).
bool close(const Tensor& got, const Tensor& want, double rtol, double atol) {
  if (got.dtype() != DType::f64) return allclose(got, want, rtol, atol);
  if (!(got.shape() == want.shape()) || want.dtype() != DType::f64) return false;
  const double *g = got.data<double>(), *w = want.data<double>();
  for (int64_t i = 0; i < got.numel(); ++i)
    if (!(std::fabs(g[i] - w[i]) <= atol + rtol * std::fabs(w[i]))) return false;
  return true;
}

const char* op_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::add: return "add";
    case BinaryOp::sub: return "sub";
    case BinaryOp::mul: return "mul";
    case BinaryOp::div: return "div";
  }
  return "?";
}

}  // namespace

TEST_CASE("broadcast_shape follows numpy and rejects mismatches", "[cpu][kernels]") {
  CHECK(kernels::broadcast_shape({3, 1, 7}, {1, 5, 7}) == Shape({3, 5, 7}));
  CHECK(kernels::broadcast_shape({7}, {2, 3, 7}) == Shape({2, 3, 7}));
  CHECK(kernels::broadcast_shape({2, 1}, {1}) == Shape({2, 1}));
  CHECK_THROWS_AS(kernels::broadcast_shape({3}, {4}), Error);
  CHECK_THROWS_AS(kernels::add(random_tensor({2, 3}), random_tensor({3, 2})), Error);
}

TEST_CASE("binary ops with broadcasting match the reference", "[cpu][kernels]") {
  for (const Case& c : broadcast_cases()) {
    for (BinaryOp op : {BinaryOp::add, BinaryOp::sub, BinaryOp::mul, BinaryOp::div}) {
      for (DType dt : {DType::f32, DType::f64}) {
        INFO(op_name(op) << " " << c.a.str() << " . " << c.b.str() << " " << dtype_name(dt));
        Tensor a = operand(c.a, op, false).to(dt), b = operand(c.b, op, true).to(dt);
        const Shape s = kernels::broadcast_shape(c.a, c.b);
        Tensor got = Tensor::empty(s, dt), want = Tensor::empty(s, dt);
        got.poison_();
        want.poison_();
        kernels::cpu::binary_forward(op, a, b, got);
        kernels::ref::binary_forward(op, a, b, want);
        const double rtol = dt == DType::f64 ? 1e-12 : (op == BinaryOp::div ? 2.4e-7 : 0.0);
        INFO(compare(got, want).str());
        CHECK(close(got, want, rtol, 0.0));
        // The allocating entry point runs the same path.
        CHECK(close(kernels::binary_forward(op, a, b), want, rtol, 0.0));
      }
    }
  }
}

TEST_CASE("sum_to and broadcast_to match the reference for each operand", "[cpu][kernels]") {
  for (const Case& c : broadcast_cases()) {
    const Shape s = kernels::broadcast_shape(c.a, c.b);
    for (const Shape& to : {c.a, c.b}) {
      for (DType dt : {DType::f32, DType::f64}) {
        INFO(s.str() << " -> " << to.str() << " " << dtype_name(dt));
        Tensor g = random_tensor(s).to(dt);
        Tensor got = Tensor::empty(to, dt), want = Tensor::empty(to, dt);
        got.poison_();
        want.poison_();
        kernels::cpu::sum_to(g, got);
        kernels::ref::sum_to(g, want);
        INFO(compare(got, want).str());
        CHECK(close(got, want, dt == DType::f64 ? 1e-12 : 1.2e-7, dt == DType::f64 ? 1e-12 : 1e-6));

        Tensor x = random_tensor(to).to(dt);
        Tensor bg = Tensor::empty(s, dt), bw = Tensor::empty(s, dt);
        bg.poison_();
        bw.poison_();
        kernels::cpu::broadcast_to(x, bg);
        kernels::ref::broadcast_to(x, bw);
        CHECK(close(bg, bw, 0.0, 0.0));  // a copy: exact
      }
    }
  }
  Tensor g = random_tensor({2, 3});
  CHECK(kernels::sum_to(g, {2, 3}).same_storage(g));  // nothing to sum: no copy
  CHECK_THROWS_AS(kernels::sum_to(g, {4}), Error);
}

TEST_CASE("unary ops and their derivatives match the reference", "[cpu][kernels]") {
  const std::vector<UnaryOp> ops = {UnaryOp::silu, UnaryOp::sigmoid, UnaryOp::softplus, UnaryOp::exp,    UnaryOp::log,
                                    UnaryOp::tanh, UnaryOp::square,  UnaryOp::sqrt,     UnaryOp::neg};
  for (UnaryOp op : ops) {
    for (const Shape& s : {Shape{1}, Shape{3, 7, 5}, Shape{1, 5, 5, 3}, Shape{2, 70001}}) {
      for (DType dt : {DType::f32, DType::f64}) {
        INFO(kernels::unary_name(op) << " " << s.str() << " " << dtype_name(dt));
        // log and sqrt on [0.1, 4] (positive, away from the pole); the rest on [-6, 6], which
        // reaches sigmoid's and softplus's tails.
        const bool pos = op == UnaryOp::log || op == UnaryOp::sqrt;
        Tensor x = random_tensor(s, pos ? 0.1f : -6.f, pos ? 4.f : 6.f).to(dt);
        Tensor dy = random_tensor(s).to(dt);
        Tensor y = Tensor::empty(s, dt), yr = Tensor::empty(s, dt), dx = Tensor::empty(s, dt),
               dxr = Tensor::empty(s, dt);
        for (Tensor* t : {&y, &yr, &dx, &dxr}) t->poison_();
        kernels::cpu::unary_forward(op, x, y);
        kernels::ref::unary_forward(op, x, yr);
        kernels::cpu::unary_backward(op, dy, x, dx);
        kernels::ref::unary_backward(op, dy, x, dxr);
        const double rtol = dt == DType::f64 ? 1e-12 : 2e-6, atol = dt == DType::f64 ? 1e-13 : 1e-6;
        INFO("forward " << compare(y, yr).str());
        CHECK(close(y, yr, rtol, atol));
        INFO("backward " << compare(dx, dxr).str());
        CHECK(close(dx, dxr, rtol, atol));
      }
    }
  }
}

TEST_CASE("softplus is stable far out on both sides", "[cpu][kernels]") {
  Tensor x = Tensor::from_vector({-200.f, -30.f, 0.f, 30.f, 200.f}, {5});
  std::vector<float> y = kernels::unary_forward(UnaryOp::softplus, x).to_vector();
  // e^-200 (1e-87) is below float's range: 0 is the correctly rounded answer.
  CHECK(y[0] == 0.f);
  CHECK(y[1] == Approx(std::exp(-30.0)).epsilon(1e-6));  // the small tail kept, not rounded to 0
  CHECK(y[2] == Approx(std::log(2.0)).epsilon(1e-7));
  CHECK(y[3] == 30.f);
  CHECK(y[4] == 200.f);  // no overflow to inf
  std::vector<float> d = kernels::unary_backward(UnaryOp::softplus, Tensor::full({5}, 1.0), x).to_vector();
  CHECK(d[0] == 0.f);
  CHECK(d[4] == 1.f);
}

TEST_CASE("sum and mean over axes match the reference", "[cpu][kernels]") {
  const Shape s{3, 5, 1, 7};
  const std::vector<std::vector<int>> axes_sets = {{}, {0}, {-1}, {1, 3}, {0, 1, 2, 3}, {2}, {3, 0}};
  for (const auto& axes : axes_sets) {
    for (bool keep : {false, true}) {
      INFO("axes " << axes.size() << " keepdim " << keep);
      Tensor x = random_tensor(s);
      Tensor got = kernels::sum(x, axes, keep);
      Shape k = s;
      int64_t count = 1;
      for (int a : axes) {
        k[a] = 1;
        count *= s[a];
      }
      Tensor want = Tensor::empty(k);
      want.poison_();
      kernels::ref::sum(x, axes, want);
      if (keep) CHECK(got.shape() == k);
      CHECK(got.numel() == k.numel());
      CHECK(allclose(got.reshape(k), want, 1.2e-7, 1e-6));
      Tensor m = kernels::mean(x, axes, keep);
      Tensor wm = want.clone();
      kernels::scale_(wm, 1.0 / static_cast<double>(count));
      CHECK(allclose(m.reshape(k), wm, 2.4e-7, 1e-6));
    }
  }
  CHECK(kernels::sum(random_tensor({2, 3}), {0, 1}).shape() == Shape({1}));
  CHECK(kernels::sum(random_tensor({2, 3}), {1}).shape() == Shape({2}));
  CHECK_THROWS_AS(kernels::sum(random_tensor({2, 3}), {2}), Error);
  CHECK_THROWS_AS(kernels::sum(random_tensor({2, 3}), {1, -1}), Error);

  // sum_all over a size past the threshold: double accumulation keeps it to the last f32 rounding.
  Tensor big = random_tensor({3, 50001});
  double want = 0;
  for (float v : big.to_vector()) want += v;
  CHECK(kernels::sum_all(big).item() == Approx(want).epsilon(1.2e-7).margin(1e-6));
  CHECK(kernels::mean_all(big).item() == Approx(want / big.numel()).epsilon(2.4e-7).margin(1e-9));
}

TEST_CASE("axpby, add_, scale_, add_scalar, mul_scalar", "[cpu][kernels]") {
  for (int64_t n : {int64_t{1}, int64_t{17}, int64_t{70001}}) {
    Tensor x = random_tensor({n}), y0 = random_tensor({n});
    std::vector<float> xv = x.to_vector(), yv = y0.to_vector();
    // Each is one or two f32 operations per element, the same ones as the loop below: exact.
    Tensor y = y0.clone();
    kernels::axpby(0.5, x, -2.0, y);
    std::vector<float> want(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) want[i] = 0.5f * xv[i] + -2.0f * yv[i];
    CHECK(allclose(y.to_vector(), want, 0, 0));

    Tensor p = Tensor::empty({n});
    p.poison_();
    kernels::axpby(3.0, x, 0.0, p);  // beta = 0 never reads y: the NaN poison must not leak
    for (int64_t i = 0; i < n; ++i) want[i] = 3.0f * xv[i];
    CHECK(allclose(p.to_vector(), want, 0, 0));

    Tensor z = y0.clone();
    kernels::add_(z, x, 0.25);
    for (int64_t i = 0; i < n; ++i) want[i] = yv[i] + 0.25f * xv[i];
    CHECK(allclose(z.to_vector(), want, 0, 0));

    kernels::scale_(z, -3.0);
    for (int64_t i = 0; i < n; ++i) want[i] *= -3.0f;
    CHECK(allclose(z.to_vector(), want, 0, 0));

    for (int64_t i = 0; i < n; ++i) want[i] = xv[i] + 1.5f;
    CHECK(allclose(kernels::add_scalar(x, 1.5).to_vector(), want, 0, 0));
    for (int64_t i = 0; i < n; ++i) want[i] = xv[i] * 1.5f;
    CHECK(allclose(kernels::mul_scalar(x, 1.5).to_vector(), want, 0, 0));
  }
}

TEST_CASE("dropout keeps element i iff philox_uniform(seed, offset, i) >= p", "[cpu][kernels]") {
  const uint64_t seed = next_seed(), offset = 7;
  for (int64_t n : {int64_t{1}, int64_t{13}, int64_t{100003}}) {
    for (float p : {0.1f, 0.5f}) {
      Tensor x = random_tensor({n}, 0.5f, 1.5f);  // nonzero, so a zero output means dropped
      std::vector<float> y = kernels::dropout_forward(x, p, seed, offset).to_vector(), xv = x.to_vector();
      int64_t kept = 0;
      bool ok = true;
      for (int64_t i = 0; i < n; ++i) {
        const bool keep = philox_uniform(seed, offset, static_cast<uint64_t>(i)) >= p;
        kept += keep;
        const float want = keep ? xv[i] * static_cast<float>(1.0 / (1.0 - p)) : 0.f;
        ok = ok && y[i] == want;
      }
      CHECK(ok);
      if (n > 1000) CHECK(std::fabs(static_cast<double>(kept) / n - (1 - p)) < 0.01);  // ~6 sigma at n = 1e5
      // Reproducible, and backward applies the same mask to dy.
      CHECK(kernels::dropout_forward(x, p, seed, offset).to_vector() == y);
      CHECK(kernels::dropout_backward(x, p, seed, offset).to_vector() == y);
    }
  }
  CHECK_THROWS_AS(kernels::dropout_forward(random_tensor({4}), 1.f, 1, 0), Error);
}

// ---- the reduction kernels (kernels/cuda/reduce.cu): the same input gives the same bits ---------
// What the op table's reduce entries (op_table.cpp, every shape against kernels::ref::sum) cannot
// say: the kernels add in a fixed order with no atomics, so a second run repeats the first bit for
// bit. The first run is also held to kernels::ref::sum, with the table's bound (1e-5 of sum |x|).
#include "core/stream.h"
#include "kernels/elementwise.h"
#include "tests/emu_test_util.h"

namespace {

using AllWorkspaceFn = int64_t (*)(int64_t);
using AllLaunchFn = void (*)(const float*, int64_t, kernels::ReduceOp, float*, float*, void*);
using SumWorkspaceFn = std::size_t (*)(const kernels::Dims&, unsigned);
using SumLaunchFn = void (*)(const void*, DType, const kernels::Dims&, unsigned, float, void*, DType, void*, void*);

void check_reductions_repeat(AllWorkspaceFn all_ws, AllLaunchFn all, SumWorkspaceFn sum_ws, SumLaunchFn sum,
                             Device d) {
  for (int64_t n : {int64_t{1001}, int64_t{70001}}) {
    INFO("reduce_all n " << n << ", seed " << run_seed());
    const Tensor x = random_tensor({n});
    const Tensor xd = x.to(d);
    Tensor ws = Tensor::empty({all_ws(n)}, DType::f32, d).poison_();
    Tensor a = Tensor::empty({1}, DType::f32, d).poison_(), b = Tensor::empty({1}, DType::f32, d).poison_();
    all(xd.data<float>(), n, kernels::ReduceOp::sum, ws.data<float>(), a.data<float>(), current_stream());
    all(xd.data<float>(), n, kernels::ReduceOp::sum, ws.data<float>(), b.data<float>(), current_stream());
    Tensor want = Tensor::empty({1}, DType::f64);
    kernels::ref::sum(x.to(DType::f64), {0}, want);
    CHECK(std::fabs(a.to(Device::cpu()).to_vector()[0] - want.to_vector()[0]) <= 1e-5 * static_cast<double>(n));
    CHECK(bit_mismatches(a.to(Device::cpu()), b.to(Device::cpu())) == 0);
  }
  // Rows split over blocks, and columns split: the plans with partial sums in the workspace.
  for (const auto& [shape, mask] : {std::pair<Shape, unsigned>{{3, 3000}, 0b10}, {{4000, 24}, 0b01}}) {
    INFO("reduce_sum " << shape.str() << " mask " << mask << ", seed " << run_seed());
    const Tensor x = random_tensor(shape);
    const Tensor xd = x.to(d);
    const kernels::Dims dm = kernels::dims_of(shape);
    const int64_t outputs = mask == 0b10 ? shape[0] : shape[1];
    Tensor ws = Tensor::empty({static_cast<int64_t>(sum_ws(dm, mask) / 4) + 1}, DType::f32, d).poison_();
    Tensor a = Tensor::empty({outputs}, DType::f32, d).poison_(), b = Tensor::empty({outputs}, DType::f32, d).poison_();
    sum(xd.raw(), DType::f32, dm, mask, 1.f, a.raw(), DType::f32, ws.raw(), current_stream());
    sum(xd.raw(), DType::f32, dm, mask, 1.f, b.raw(), DType::f32, ws.raw(), current_stream());
    Tensor want = Tensor::empty({outputs}, DType::f64);
    kernels::ref::sum(x.to(DType::f64), {mask == 0b10 ? 1 : 0}, want);
    const double terms = static_cast<double>(shape.numel() / outputs);
    CHECK(allclose(a.to(Device::cpu()), want.to(DType::f32), 0, 1e-5 * terms));
    CHECK(bit_mismatches(a.to(Device::cpu()), b.to(Device::cpu())) == 0);
  }
}

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)
TEST_CASE("reduce_all and reduce_sum under the emulator repeat their bits", "[emu][kernels]") {
  for_each_order([] {
    check_reductions_repeat(emu::reduce_all_workspace, emu::reduce_all, emu::reduce_sum_workspace_bytes,
                            emu::reduce_sum, Device::cpu());
  });
}
#endif

TEST_CASE("reduce_all and reduce_sum on the GPU repeat their bits", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  check_reductions_repeat(cuda::reduce_all_workspace, cuda::reduce_all, cuda::reduce_sum_workspace_bytes,
                          cuda::reduce_sum, Device::cuda(0));
#endif
}
