// f64 gradchecks of every backward rule in autograd/linalg.h, over every option.
#include <catch2/catch.hpp>

#include "autograd/gradcheck.h"
#include "autograd/linalg.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::ag;

// Default gradcheck tolerances (autograd/gradcheck.h): every op here is linear in each input, so
// central differences have no truncation error, only rounding (~1e-10).

namespace {

void check(const GradcheckResult& r) {
  INFO(r.report);
  CHECK(r.ok);
}

Tensor f64(const Shape& s) { return test::random_tensor(s).to(DType::f64); }

}  // namespace

TEST_CASE("gradcheck: matmul, 2-D and batched", "[cpu][autograd]") {
  auto mm = [](const std::vector<Var>& v) { return matmul(v[0], v[1]); };
  check(gradcheck(mm, {test::random_tensor({3, 4}), test::random_tensor({4, 2})}));
  check(gradcheck(mm, {test::random_tensor({1, 1}), test::random_tensor({1, 3})}));
  check(gradcheck(mm, {test::random_tensor({2, 3, 5}), test::random_tensor({2, 5, 1})}));
  // Only one side requiring a gradient (the other passed through): the rule skips the other.
  // (gradcheck passes such inputs as they are, so they are given in f64.)
  check(gradcheck(mm, {f64({3, 4}), test::random_tensor({4, 2})}, {}, {0}));
  check(gradcheck(mm, {test::random_tensor({2, 3, 4}), f64({2, 4, 2})}, {}, {1}));
}

TEST_CASE("gradcheck: linear with and without bias, any leading dims", "[cpu][autograd]") {
  auto with_b = [](const std::vector<Var>& v) { return linear(v[0], v[1], v[2]); };
  auto no_b = [](const std::vector<Var>& v) { return linear(v[0], v[1]); };
  check(gradcheck(with_b, {test::random_tensor({2, 3, 5}), test::random_tensor({4, 5}), test::random_tensor({4})}));
  check(gradcheck(with_b, {test::random_tensor({5}), test::random_tensor({2, 5}), test::random_tensor({2})}));
  check(gradcheck(no_b, {test::random_tensor({1, 3}), test::random_tensor({2, 3})}));
  check(gradcheck(no_b, {test::random_tensor({2, 2, 2, 3}), test::random_tensor({3, 3})}));
  check(gradcheck(with_b, {f64({3, 4}), test::random_tensor({2, 4}), test::random_tensor({2})}, {}, {0}));
}

TEST_CASE("gradcheck: conv2d over kernel sizes, strides, paddings and bias", "[cpu][autograd]") {
  struct C {
    int64_t B, H, W, Cin, Cout, K;
    int s, p;
    bool bias;
  };
  // Every (kernel, stride, padding, bias) combination, odd H and W under stride 2, batch 1.
  std::vector<C> cases;
  int i = 0;
  for (int64_t K : {1, 3})
    for (int s : {1, 2})
      for (int p : {0, 1})
        for (bool bias : {false, true}) {
          ++i;
          cases.push_back(C{i % 2 ? 1 : 2, 5, 4 + i % 3, 2, 3, K, s, p, bias});
        }
  for (const C& c : cases) {
    CAPTURE(c.B, c.H, c.W, c.Cin, c.Cout, c.K, c.s, c.p, c.bias);
    std::vector<Tensor> in{test::random_tensor({c.B, c.H, c.W, c.Cin}), test::random_tensor({c.Cout, c.K, c.K, c.Cin})};
    if (c.bias) in.push_back(test::random_tensor({c.Cout}));
    auto f = [&](const std::vector<Var>& v) { return conv2d(v[0], v[1], c.bias ? v[2] : Var(), {c.s, c.p}); };
    check(gradcheck(f, in));
  }
  // Only the weights, or only the input, requiring a gradient.
  auto f = [](const std::vector<Var>& v) { return conv2d(v[0], v[1], v[2], {2, 1}); };
  check(gradcheck(f, {f64({2, 5, 5, 2}), test::random_tensor({3, 3, 3, 2}), test::random_tensor({3})}, {}, {0}));
  check(gradcheck(f, {test::random_tensor({2, 5, 5, 2}), f64({3, 3, 3, 2}), f64({3})}, {}, {1, 2}));
}

// Resampling, concat_last and slice_last alone are gradchecked from the op table
// (tests/kernels/op_table.cpp); here, reshape and their composition in a UNet skip.
TEST_CASE("gradcheck: reshape, and resampling, concat and slice composed", "[cpu][autograd]") {
  check(gradcheck([](const std::vector<Var>& v) { return matmul(reshape(v[0], {2, 6}), v[1]); },
                  {test::random_tensor({3, 4}), test::random_tensor({6, 2})}));
  // A UNet skip: upsample, concat with the skip, split again, pool back.
  check(gradcheck(
      [](const std::vector<Var>& v) {
        Var h = concat_last({upsample_nearest2x(v[0]), v[1]});
        return avg_pool2x(slice_last(h, 1, 4));
      },
      {test::random_tensor({1, 2, 2, 2}), test::random_tensor({1, 4, 4, 3})}));
}
