// softmax over the last dim: its rows, large logits and the vectorised exp (the fast path against the
// reference loops, on every backend, is in the op table, op_table_test.cpp).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/vec_math.h"
#include "kernels/softmax.h"
#include "tests/test_util.h"

using namespace diffuse;

TEST_CASE("softmax_last rows sum to one", "[cpu][kernels]") {
  // The fast path against the reference is in the op table (op_table_test.cpp).
  for (Shape s : {Shape{3, 7}, Shape{2, 3, 196}, Shape{1, 1}, Shape{5, 49}}) {
    CAPTURE(s.str());
    const std::vector<float> v = kernels::softmax_last_forward(test::random_tensor(s, -30.f, 30.f)).to_vector();
    const int64_t L = s[-1];
    for (int64_t r = 0; r < static_cast<int64_t>(v.size()) / L; ++r) {
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
