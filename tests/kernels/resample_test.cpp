// upsample_nearest2x and avg_pool2x: the values they move and the shapes they refuse. Every backend
// against the reference loops is in the op table (op_table_test.cpp).
#include <catch2/catch.hpp>

#include "kernels/resample.h"
#include "tests/test_util.h"

using namespace diffuse;

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
