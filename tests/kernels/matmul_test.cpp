// matmul and linear: the OpenBLAS path against the plain triple loop.
#include <catch2/catch.hpp>

#include <cmath>
#include <span>

#include "kernels/matmul.h"
#include "tests/test_util.h"

using namespace diffuse;

namespace {

// Integers in [-4, 4): every product and every partial sum of the sizes below is an integer under 2^24,
// exact in f32 in any summation order, so the fast path must equal the reference bit for bit.
Tensor ints(const Shape& s) {
  Tensor t = test::random_tensor(s, -4.f, 4.f);
  for (float& v : std::span<float>(t.data<float>(), static_cast<size_t>(t.numel()))) v = std::floor(v);
  return t;
}

Tensor poisoned(const Shape& s) {
  Tensor t = Tensor::empty(s);
  t.poison_();
  return t;
}

void check_exact(const Tensor& got, const Tensor& want, const char* what) {
  const test::Diff d = test::compare(got, want);
  INFO(what << ": " << d.str());
  CHECK(d.nonfinite == 0);
  CHECK(d.max_abs == 0);
}

}  // namespace

TEST_CASE("matmul equals the triple loop exactly on small integers", "[cpu][kernels]") {
  struct C {
    int64_t Bt, M, K, N;  // Bt 0: a 2-D product
  };
  for (C c : {C{0, 5, 7, 4}, C{0, 1, 1, 1}, C{0, 33, 64, 17}, C{3, 5, 7, 4}, C{1, 2, 9, 1}, C{4, 16, 3, 31}}) {
    CAPTURE(c.Bt, c.M, c.K, c.N);
    const Shape as = c.Bt ? Shape{c.Bt, c.M, c.K} : Shape{c.M, c.K};
    const Shape bs = c.Bt ? Shape{c.Bt, c.K, c.N} : Shape{c.K, c.N};
    const Shape ys = c.Bt ? Shape{c.Bt, c.M, c.N} : Shape{c.M, c.N};
    Tensor a = ints(as), b = ints(bs), g = ints(ys);
    Tensor y = poisoned(ys), want = poisoned(ys);
    kernels::cpu::matmul_forward(a, b, y);
    kernels::ref::matmul_forward(a, b, want);
    check_exact(y, want, "y");
    check_exact(kernels::matmul_forward(a, b), want, "y (dispatch)");
    kernels::MatmulGrads got{poisoned(as), poisoned(bs)}, ref{poisoned(as), poisoned(bs)};
    kernels::cpu::matmul_backward(g, a, b, got);
    kernels::ref::matmul_backward(g, a, b, ref);
    check_exact(got.da, ref.da, "da");
    check_exact(got.db, ref.db, "db");
    kernels::MatmulGrads only_b = kernels::matmul_backward(g, a, b, false, true);
    CHECK(!only_b.da.defined());
    check_exact(only_b.db, ref.db, "db alone");
  }
}

TEST_CASE("linear equals the triple loop exactly on small integers", "[cpu][kernels]") {
  struct C {
    Shape x;
    int64_t Out;
    bool bias;
  };
  // The last two span several row chunks of the fast path (and so several threads' partial dW):
  // sums stay below 300 * 16 (y, dx) and 1000 * 16 (dW), still exact.
  for (const C& c : {C{{2, 3, 6}, 4, true}, C{{1, 1}, 1, false}, C{{5, 33}, 7, true}, C{{2, 7, 7, 16}, 8, true},
                     C{{9, 5}, 3, false}, C{{1000, 300}, 5, true}, C{{4, 250, 64}, 3, false}}) {
    CAPTURE(c.x.str(), c.Out, c.bias);
    const int64_t In = c.x[-1];
    Shape ys = c.x;
    ys[-1] = c.Out;
    Tensor x = ints(c.x), w = ints({c.Out, In}), b = c.bias ? ints({c.Out}) : Tensor(), g = ints(ys);
    Tensor y = poisoned(ys), want = poisoned(ys);
    kernels::cpu::linear_forward(x, w, b, y);
    kernels::ref::linear_forward(x, w, b, want);
    check_exact(y, want, "y");
    check_exact(kernels::linear_forward(x, w, b), want, "y (dispatch)");
    kernels::LinearGrads got{poisoned(c.x), poisoned({c.Out, In}), c.bias ? poisoned({c.Out}) : Tensor()};
    kernels::LinearGrads ref{poisoned(c.x), poisoned({c.Out, In}), c.bias ? poisoned({c.Out}) : Tensor()};
    kernels::cpu::linear_backward(g, x, w, got);
    kernels::ref::linear_backward(g, x, w, ref);
    check_exact(got.dx, ref.dx, "dx");
    check_exact(got.dw, ref.dw, "dw");
    if (c.bias) check_exact(got.db, ref.db, "db");
  }
}

TEST_CASE("matmul and linear on random floats, f32 and f64", "[cpu][kernels]") {
  // Different summation orders in f32: |err| / max(|want|, 1) <= 1e-5 sqrt(K) (terms <= 1).
  for (DType dt : {DType::f32, DType::f64}) {
    const double tol = dt == DType::f64 ? 1e-13 : 1e-5;
    Tensor a = test::random_tensor({3, 37, 129}).to(dt), b = test::random_tensor({3, 129, 11}).to(dt);
    Tensor y = kernels::matmul_forward(a, b), want = Tensor::empty(y.shape(), dt);
    kernels::ref::matmul_forward(a, b, want);
    CHECK(test::compare(y, want, 1.0).max_rel <= tol * std::sqrt(129.0));
    Tensor x = test::random_tensor({50, 129}).to(dt), w = test::random_tensor({13, 129}).to(dt),
           bias = test::random_tensor({13}).to(dt);
    Tensor l = kernels::linear_forward(x, w, bias), lwant = Tensor::empty(l.shape(), dt);
    kernels::ref::linear_forward(x, w, bias, lwant);
    CHECK(test::compare(l, lwant, 1.0).max_rel <= tol * std::sqrt(130.0));
  }
}

TEST_CASE("matmul and linear reject shapes that do not fit", "[cpu][kernels]") {
  CHECK_THROWS_AS(kernels::matmul_forward(ints({3, 5, 7}), ints({3, 6, 4})), Error);
  CHECK_THROWS_AS(kernels::matmul_forward(ints({3, 5, 7}), ints({2, 7, 4})), Error);
  CHECK_THROWS_AS(kernels::matmul_forward(ints({5, 7}), ints({3, 7, 4})), Error);
  CHECK_THROWS_AS(kernels::linear_forward(ints({2, 6}), ints({4, 5}), Tensor()), Error);
  CHECK_THROWS_WITH(kernels::linear_forward(ints({2, 6}), ints({4, 6}), ints({3})), Catch::Contains("bias"));
  CHECK_THROWS_AS(kernels::matmul_backward(ints({5, 3}), ints({5, 7}), ints({7, 4}), true, true), Error);
}
