// concat_last / slice_last: exact moves of channel runs, checked element by element.
#include <catch2/catch.hpp>

#include "kernels/concat.h"
#include "tests/test_util.h"

using namespace diffuse;

TEST_CASE("concat_last places each input's channels side by side", "[cpu][kernels]") {
  // Small, and big enough for the OpenMP path; one input of width 1; f64 too.
  for (int64_t rows : {int64_t{6}, int64_t{64 * 14 * 14}})
    for (DType dt : {DType::f32, DType::f64}) {
      CAPTURE(rows, dt == DType::f64);
      Tensor a = test::random_tensor({rows, 2}).to(dt), b = test::random_tensor({rows, 5}).to(dt),
             c = test::random_tensor({rows, 1}).to(dt);
      Tensor y = kernels::concat_last_forward({a, b, c});
      REQUIRE(y.shape() == Shape{rows, 8});
      const auto yv = y.to_vector(), av = a.to_vector(), bv = b.to_vector(), cv = c.to_vector();
      bool ok = true;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < 8; ++k) {
          const float want = k < 2 ? av[r * 2 + k] : k < 7 ? bv[r * 5 + k - 2] : cv[r];
          ok = ok && yv[r * 8 + k] == want;
        }
      CHECK(ok);
      std::vector<Tensor> back = kernels::concat_last_backward(y, {2, 5, 1});
      REQUIRE(back.size() == 3);
      CHECK(back[0].to_vector() == av);
      CHECK(back[1].to_vector() == bv);
      CHECK(back[2].to_vector() == cv);
    }
}

TEST_CASE("slice_last and its backward", "[cpu][kernels]") {
  Tensor x = test::random_tensor({2, 3, 4, 7});
  Tensor s = kernels::slice_last_forward(x, 2, 6);
  REQUIRE(s.shape() == Shape{2, 3, 4, 4});
  const auto xv = x.to_vector(), sv = s.to_vector();
  for (int64_t r = 0; r < 24; ++r)
    for (int64_t k = 0; k < 4; ++k) REQUIRE(sv[r * 4 + k] == xv[r * 7 + 2 + k]);
  Tensor back = kernels::slice_last_backward(s, 7, 2);
  REQUIRE(back.shape() == x.shape());
  const auto bv = back.to_vector();
  for (int64_t r = 0; r < 24; ++r)
    for (int64_t k = 0; k < 7; ++k) REQUIRE(bv[r * 7 + k] == (k >= 2 && k < 6 ? xv[r * 7 + k] : 0.f));
  CHECK(kernels::slice_last_forward(x, 3, 3).numel() == 0);
  CHECK_THROWS_AS(kernels::slice_last_forward(x, 5, 8), Error);
  CHECK_THROWS_AS(kernels::slice_last_forward(x, 4, 3), Error);
  CHECK_THROWS_AS(kernels::concat_last_forward({x, test::random_tensor({2, 3, 5, 7})}), Error);
  CHECK_THROWS_AS(kernels::concat_last_forward({x, x.to(DType::f64)}), Error);
  CHECK_THROWS_AS(kernels::concat_last_backward(x, {3, 3}), Error);
}
