// upsample_nearest2x and avg_pool2x: the fast path against the element-wise reference loops.
#include <catch2/catch.hpp>

#include "kernels/resample.h"
#include "tests/test_util.h"

using namespace diffuse;

namespace {

Tensor poisoned(const Shape& s, DType dt) {
  Tensor t = Tensor::empty(s, dt);
  t.poison_();
  return t;
}

// Upsampling copies (exact); the block sums add four values in the same order on both paths, so
// they are exact too.
void check_exact(const Tensor& got, const Tensor& want) {
  const test::Diff d = test::compare(got, want);
  INFO(d.str());
  CHECK(d.nonfinite == 0);
  CHECK(d.max_abs == 0);
}

}  // namespace

TEST_CASE("upsample_nearest2x and avg_pool2x equal the reference loops", "[cpu][kernels]") {
  // Odd sizes, batch 1, one channel, and one big enough for the OpenMP path.
  for (Shape s : {Shape{2, 3, 5, 4}, Shape{1, 1, 1, 1}, Shape{1, 7, 3, 1}, Shape{3, 14, 14, 64}})
    for (DType dt : {DType::f32, DType::f64}) {
      CAPTURE(s.str(), dt == DType::f64);
      const Shape big{s[0], 2 * s[1], 2 * s[2], s[3]};
      Tensor x = test::random_tensor(s).to(dt), xb = test::random_tensor(big).to(dt);
      Tensor a = poisoned(big, dt), b = poisoned(big, dt);
      kernels::cpu::upsample_nearest2x_forward(x, a);
      kernels::ref::upsample_nearest2x_forward(x, b);
      check_exact(a, b);
      Tensor c = poisoned(s, dt), d = poisoned(s, dt);
      kernels::cpu::upsample_nearest2x_backward(xb, c);
      kernels::ref::upsample_nearest2x_backward(xb, d);
      check_exact(c, d);
      Tensor e = poisoned(s, dt), f = poisoned(s, dt);
      kernels::cpu::avg_pool2x_forward(xb, e);
      kernels::ref::avg_pool2x_forward(xb, f);
      check_exact(e, f);
      Tensor g = poisoned(big, dt), h = poisoned(big, dt);
      kernels::cpu::avg_pool2x_backward(x, g);
      kernels::ref::avg_pool2x_backward(x, h);
      check_exact(g, h);
      check_exact(kernels::upsample_nearest2x_forward(x), b);
      check_exact(kernels::avg_pool2x_forward(xb), f);
    }
}

TEST_CASE("upsample_nearest2x and avg_pool2x move the right values", "[cpu][kernels]") {
  Tensor x = test::random_tensor({2, 3, 5, 4});
  Tensor up = kernels::upsample_nearest2x_forward(x);
  REQUIRE(up.shape() == Shape{2, 6, 10, 4});
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < 6; ++h)
      for (int64_t w = 0; w < 10; ++w)
        for (int64_t c = 0; c < 4; ++c)
          REQUIRE(up.data<float>()[((b * 6 + h) * 10 + w) * 4 + c] ==
                  x.data<float>()[((b * 3 + h / 2) * 5 + w / 2) * 4 + c]);
  // The pool of an upsampled image is the image (four equal values: exact up to the 1/4 scale).
  CHECK(test::compare(kernels::avg_pool2x_forward(up), x).max_abs < 1e-6);
  // The upsample backward of a constant-per-block gradient is four times the block value (exact:
  // 2v is, 3v rounds by at most ulp(v), and that is below half an ulp of 4v).
  const auto sums = kernels::upsample_nearest2x_backward(up).to_vector(), xv = x.to_vector();
  for (size_t i = 0; i < xv.size(); ++i) REQUIRE(sums[i] == 4 * xv[i]);
  CHECK_THROWS_WITH(kernels::avg_pool2x_forward(x), Catch::Contains("even"));
  CHECK_THROWS_AS(kernels::upsample_nearest2x_forward(x.reshape({6, 5, 4})), Error);
}
