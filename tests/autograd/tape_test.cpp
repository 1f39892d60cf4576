#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "autograd/gradcheck.h"
#include "autograd/tape.h"
#include "kernels/gemm.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::ag;

namespace {

// A tiny op defined right here, so the engine is tested on its own: y = a * b elementwise (f64).
Var mul64(const Var& a, const Var& b) {
  Tensor out = Tensor::empty(a.shape(), DType::f64);
  for (int64_t i = 0; i < a.numel(); ++i)
    out.data<double>()[i] = a.value().data<double>()[i] * b.value().data<double>()[i];
  Tensor av = a.value(), bv = b.value();
  return record("mul64", out, {a, b}, [av, bv](const Tensor& g) {
    Tensor ga = Tensor::empty(av.shape(), DType::f64), gb = Tensor::empty(av.shape(), DType::f64);
    for (int64_t i = 0; i < av.numel(); ++i) {
      ga.data<double>()[i] = g.data<double>()[i] * bv.data<double>()[i];
      gb.data<double>()[i] = g.data<double>()[i] * av.data<double>()[i];
    }
    return std::vector<Tensor>{ga, gb};
  });
}

}  // namespace

TEST_CASE("the tape accumulates gradients of a reused variable", "[cpu][autograd]") {
  Var x(Tensor::from_vector({2, 3}, {2}).to(DType::f64), true);
  Var c(Tensor::from_vector({5, 7}, {2}).to(DType::f64), false);
  Var y = mul64(mul64(x, x), c);  // y = c x^2, dy/dx = 2 c x
  backward(y, Tensor::full({2}, 1.0, DType::f64));
  CHECK(x.grad().to_vector() == std::vector<float>{20, 42});
  CHECK_FALSE(c.has_grad());
  CHECK(tape_size() == 0);
  // A second backward accumulates (+=); zero_grad is explicit.
  Var y2 = mul64(x, c);
  backward(y2, Tensor::full({2}, 1.0, DType::f64));
  CHECK(x.grad().to_vector() == std::vector<float>{25, 49});
  x.zero_grad();
  CHECK_FALSE(x.has_grad());
}

TEST_CASE("no_grad records nothing and detach cuts the graph", "[cpu][autograd]") {
  Var x(Tensor::from_vector({1, 2}, {2}).to(DType::f64), true);
  {
    NoGrad ng;
    Var y = mul64(x, x);
    CHECK_FALSE(y.requires_grad());
    CHECK(tape_size() == 0);
  }
  Var y = mul64(x.detach(), x);
  CHECK(tape_size() == 1);
  backward(y, Tensor::full({2}, 1.0, DType::f64));
  CHECK(x.grad().to_vector() == std::vector<float>{1, 2});  // only through the second operand
  CHECK_THROWS_AS(backward(y), Error);  // not a scalar: needs a seed
  clear_tape();
}

TEST_CASE("gradcheck accepts a right rule and rejects a wrong one", "[cpu][autograd]") {
  auto good = [](const std::vector<Var>& v) { return mul64(v[0], v[1]); };
  auto r = gradcheck(good, {test::random_tensor({7}), test::random_tensor({7})});
  CHECK(r.ok);
  auto bad = [](const std::vector<Var>& v) {
    Tensor out = Tensor::empty(v[0].shape(), DType::f64);
    for (int64_t i = 0; i < v[0].numel(); ++i) out.data<double>()[i] = v[0].value().data<double>()[i] * 3;
    return record("wrong", out, {v[0]}, [](const Tensor& g) {
      Tensor gx = g.clone();  // forgets the factor 3
      return std::vector<Tensor>{gx};
    });
  };
  auto r2 = gradcheck(bad, {test::random_tensor({5})});
  CHECK_FALSE(r2.ok);
  INFO(r2.report);
  CHECK(r2.max_abs_err > 0.1);
}

TEST_CASE("gemm fast path equals the reference on random shapes", "[cpu][kernels]") {
  // Inputs are small integers so every product and sum is exact in f32: any mismatch is a bug,
  // not rounding (K * 4 * 4 < 2^24).
  for (auto [M, N, K] : {std::tuple<int, int, int>{1, 1, 1}, {7, 13, 5}, {64, 33, 130}, {129, 257, 300}}) {
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        std::vector<float> A(M * K), B(K * N), C(M * N, 1.f), R(M * N, 1.f);
        uint64_t s = test::next_seed();
        for (auto& a : A) a = static_cast<float>(static_cast<int>((s = s * 6364136223846793005ull + 1) >> 60) - 8) / 2;
        for (auto& b : B) b = static_cast<float>(static_cast<int>((s = s * 6364136223846793005ull + 1) >> 60) - 8) / 2;
        int lda = ta ? M : K, ldb = tb ? K : N;
        kernels::gemm(ta, tb, M, N, K, 1.f, A.data(), lda, B.data(), ldb, 0.5f, C.data(), N);
        kernels::gemm_reference(ta, tb, M, N, K, 1.f, A.data(), lda, B.data(), ldb, 0.5f, R.data(), N);
        CAPTURE(M, N, K, ta, tb);
        CHECK(C == R);
      }
  }
}

TEST_CASE("tape_ops lists the recorded nodes with their names and shapes", "[cpu][autograd]") {
  Var x(Tensor::from_vector({1, 2, 3, 4, 5, 6}, {3, 2}).to(DType::f64), true);
  Var c(Tensor::from_vector({1, 1, 1, 1, 1, 1}, {3, 2}).to(DType::f64), false);
  Var d = mul64(x, c);
  Var r = record("rows", Tensor::zeros({3}, DType::f64), {d, Var(), c}, [](const Tensor&) {
    return std::vector<Tensor>{Tensor(), Tensor(), Tensor()};
  });
  const std::vector<TapeOp> ops = tape_ops();
  REQUIRE(ops.size() == 2);
  CHECK(std::string(ops[0].name) == "mul64");
  CHECK(ops[0].inputs == std::vector<Shape>{Shape{3, 2}, Shape{3, 2}});
  CHECK(ops[0].output == Shape{3, 2});
  CHECK(std::string(ops[1].name) == "rows");
  // An undefined input keeps its place, as Shape().
  CHECK(ops[1].inputs == std::vector<Shape>{Shape{3, 2}, Shape(), Shape{3, 2}});
  CHECK(ops[1].output == Shape{3});
  clear_tape();
  CHECK(tape_ops().empty());
}
