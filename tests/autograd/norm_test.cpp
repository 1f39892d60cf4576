// GroupNorm under no_grad. Its backward, every option, is gradchecked from the op table
// (tests/kernels/op_table.cpp, tests/autograd/op_table_gradcheck_test.cpp).
#include <catch2/catch.hpp>

#include "autograd/norm.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::ag;

TEST_CASE("group_norm records nothing under no_grad", "[cpu][autograd]") {
  Var x(test::random_tensor({2, 4, 6}), true);
  NoGrad ng;
  Var y = group_norm(x, {}, {}, 3);
  CHECK_FALSE(y.requires_grad());
  CHECK(tape_size() == 0);
}
