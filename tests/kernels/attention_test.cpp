// Multi-head attention on the cpu: one key, and the shapes it refuses. The GEMM fast path against the
// reference loops, and the kernels, are in the op table (op_table_test.cpp).
#include <catch2/catch.hpp>

#include "kernels/attention.h"
#include "tests/test_util.h"

using namespace diffuse;

TEST_CASE("attention with one key returns that value", "[cpu][kernels]") {
  // Tk = 1: every softmax row is exactly [1], so out[b, t] = v[b, 0] for every query.
  Tensor q = test::random_tensor({2, 5, 8}), k = test::random_tensor({2, 1, 8}), v = test::random_tensor({2, 1, 8});
  auto r = kernels::attention_forward(q, k, v, 2);
  std::vector<float> o = r.out.to_vector(), vv = v.to_vector();
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 5; ++t)
      for (int c = 0; c < 8; ++c) CHECK(o[(b * 5 + t) * 8 + c] == vv[b * 8 + c]);
}

TEST_CASE("attention rejects bad shapes", "[cpu][kernels]") {
  Tensor q = test::random_tensor({2, 5, 6}), k = test::random_tensor({2, 3, 6});
  CHECK_THROWS_AS(kernels::attention_forward(q, k, k, 4), Error);                             // 6 % 4
  CHECK_THROWS_AS(kernels::attention_forward(q, k, test::random_tensor({2, 4, 6}), 2), Error);  // k/v differ
  CHECK_THROWS_AS(kernels::attention_forward(q, test::random_tensor({1, 3, 6}), test::random_tensor({1, 3, 6}), 2),
                  Error);
}
