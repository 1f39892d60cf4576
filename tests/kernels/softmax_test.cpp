// softmax over the last dim: the fast cpu path against the reference loops.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/vec_math.h"
#include "kernels/softmax.h"
#include "tests/test_util.h"

using namespace diffuse;

TEST_CASE("softmax_last fast path equals the reference", "[cpu][kernels]") {
  for (Shape s : {Shape{3, 7}, Shape{2, 3, 196}, Shape{1, 1}, Shape{5, 49}}) {
    // Logits up to +-30: exp without the max subtracted would reach 1e13, still finite in f32, but
    // the rows differ by orders of magnitude, so both the max and the normalisation are exercised.
    Tensor x = test::random_tensor(s, -30.f, 30.f), dy = test::random_tensor(s);
    Tensor y = Tensor::empty(s), yr = Tensor::empty(s), dx = Tensor::empty(s), dxr = Tensor::empty(s);
    y.poison_(); yr.poison_(); dx.poison_(); dxr.poison_();
    kernels::cpu::softmax_last_forward(x, y);
    kernels::ref::softmax_last_forward(x, yr);
    CAPTURE(s.str());
    INFO(test::compare(y, yr).str());
    // Probabilities in [0, 1]; the f32 sum of <= 196 terms is off by <= 196 * 6e-8 relative: 2e-5.
    CHECK(test::allclose(y, yr, 2e-5, 1e-7));
    kernels::cpu::softmax_last_backward(dy, yr, dx);
    kernels::ref::softmax_last_backward(dy, yr, dxr);
    CHECK(test::allclose(dx, dxr, 2e-5, 1e-6));
    std::vector<float> v = y.to_vector();
    const int64_t L = s[-1];
    for (int64_t r = 0; r < y.numel() / L; ++r) {
      double sum = 0;
      for (int64_t j = 0; j < L; ++j) sum += v[r * L + j];
      CHECK(std::fabs(sum - 1) < 2e-5);
    }
  }
}

TEST_CASE("softmax_last does not overflow on large logits", "[cpu][kernels]") {
  Tensor x = Tensor::from_vector({1000.f, 999.f, -1000.f, 88.f, 89.f, 90.f}, {2, 3});
  std::vector<float> y = kernels::softmax_last_forward(x).to_vector();
  const double e1 = std::exp(-1.0), e2 = std::exp(-2.0);
  CHECK(y[0] == Approx(1 / (1 + e1)).epsilon(1e-6));
  CHECK(y[1] == Approx(e1 / (1 + e1)).epsilon(1e-6));
  CHECK(y[2] < 1e-37f);  // e^-2000 underflows; the vectorised exp saturates at 1.6e-38
  CHECK(y[5] == Approx(1 / (1 + e1 + e2)).epsilon(1e-6));
}

TEST_CASE("the vectorised exp matches double exp to 1e-7 relative", "[cpu][kernels]") {
  // Cephes' expf is good to ~2 ulp (2.4e-7 relative at worst); measured 8e-8 on this grid.
  double worst = 0;
  for (float x = -87.f; x < 88.f; x += 0.0137f) {
    const double want = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(kernels::cpu::exp_vec(x) - want) / want);
  }
  CHECK(worst < 2.4e-7);
  CHECK(kernels::cpu::exp_vec(-1000.f) < 1e-37f);   // saturates instead of underflowing to 0
  CHECK(kernels::cpu::exp_vec(1000.f) > 1e38f);     // and instead of overflowing to inf
  CHECK(kernels::cpu::exp_vec(0.f) == 1.f);
}
