// GroupNorm (+ AdaGN scale/shift, + SiLU) on the cpu: accuracy when the mean dwarfs the spread, the
// normalised output's moments, and the shapes it refuses. The fast path against the reference, and
// the kernels on every launch path, are in the op table (op_table_test.cpp).
#include <catch2/catch.hpp>

#include <cmath>

#include "kernels/group_norm.h"
#include "tests/test_util.h"

using namespace diffuse;
using kernels::GroupNormOptions;

namespace {

// Activations with a non-zero mean per channel, so centring matters.
Tensor activations(const Shape& s) {
  Tensor x = test::random_normal(s);
  float* p = x.data<float>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] = 1.5f * p[i] + 0.7f;
  return x;
}

}  // namespace

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
