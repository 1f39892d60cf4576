#include <catch2/catch.hpp>

#include "autograd/gradcheck.h"
#include "autograd/linalg.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::ag;

// Default gradcheck tolerances (autograd/gradcheck.h): these ops are linear in each input, so
// central differences are exact up to rounding.
TEST_CASE("gradcheck: matmul and linear", "[cpu][autograd]") {
  auto mm = gradcheck([](const std::vector<Var>& v) { return matmul(v[0], v[1]); },
                      {test::random_tensor({3, 4}), test::random_tensor({4, 2})});
  INFO(mm.report);
  CHECK(mm.ok);
  auto bmm = gradcheck([](const std::vector<Var>& v) { return matmul(v[0], v[1]); },
                       {test::random_tensor({2, 3, 5}), test::random_tensor({2, 5, 1})});
  INFO(bmm.report);
  CHECK(bmm.ok);
  auto lin = gradcheck([](const std::vector<Var>& v) { return linear(v[0], v[1], v[2]); },
                       {test::random_tensor({2, 3, 5}), test::random_tensor({4, 5}), test::random_tensor({4})});
  INFO(lin.report);
  CHECK(lin.ok);
  auto nob = gradcheck([](const std::vector<Var>& v) { return linear(v[0], v[1]); },
                       {test::random_tensor({1, 3}), test::random_tensor({2, 3})});
  CHECK(nob.ok);
}

TEST_CASE("gradcheck: conv2d over strides, paddings and kernel sizes", "[cpu][autograd]") {
  struct C { int64_t B, H, W, Cin, Cout, K; int s, p; bool bias; };
  for (C c : {C{1, 5, 4, 2, 3, 3, 1, 1, true}, C{2, 5, 5, 3, 2, 3, 2, 1, true}, C{1, 4, 4, 3, 2, 1, 1, 0, false},
              C{2, 4, 6, 2, 2, 1, 2, 0, true}, C{1, 6, 5, 2, 2, 3, 2, 0, false}}) {
    CAPTURE(c.B, c.H, c.W, c.Cin, c.Cout, c.K, c.s, c.p, c.bias);
    std::vector<Tensor> in{test::random_tensor({c.B, c.H, c.W, c.Cin}), test::random_tensor({c.Cout, c.K, c.K, c.Cin})};
    if (c.bias) in.push_back(test::random_tensor({c.Cout}));
    auto r = gradcheck(
        [&](const std::vector<Var>& v) { return conv2d(v[0], v[1], c.bias ? v[2] : Var(), {c.s, c.p}); }, in);
    INFO(r.report);
    CHECK(r.ok);
  }
}

TEST_CASE("gradcheck: resampling, concat, slice and reshape", "[cpu][autograd]") {
  auto up = gradcheck([](const std::vector<Var>& v) { return upsample_nearest2x(v[0]); }, {test::random_tensor({2, 3, 2, 3})});
  CHECK(up.ok);
  auto pool = gradcheck([](const std::vector<Var>& v) { return avg_pool2x(v[0]); }, {test::random_tensor({1, 4, 6, 2})});
  CHECK(pool.ok);
  auto cat = gradcheck([](const std::vector<Var>& v) { return concat_last({v[0], v[1], v[0]}); },
                       {test::random_tensor({2, 2, 3}), test::random_tensor({2, 2, 1})});
  INFO(cat.report);
  CHECK(cat.ok);
  auto sl = gradcheck([](const std::vector<Var>& v) { return slice_last(v[0], 1, 3); }, {test::random_tensor({3, 4})});
  CHECK(sl.ok);
  auto rs = gradcheck([](const std::vector<Var>& v) { return matmul(reshape(v[0], {2, 6}), v[1]); },
                      {test::random_tensor({3, 4}), test::random_tensor({6, 2})});
  CHECK(rs.ok);
}
