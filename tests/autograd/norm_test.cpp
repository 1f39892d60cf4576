// GroupNorm's backward, every option, against central finite differences in f64.
#include <catch2/catch.hpp>

#include "autograd/gradcheck.h"
#include "autograd/norm.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::ag;

TEST_CASE("group_norm gradcheck: gamma/beta, scale/shift, silu on and off", "[cpu][autograd]") {
  struct Case {
    Shape x;
    int groups;
  };
  // Odd sizes (C=6 with G=3, T=5), batch 1, NHWC, (B,C) with 4 elements per group. Groups keep
  // >= 4 elements so rstd stays O(1) and the finite differences' O(h^2 f''') error stays ~1e-9.
  const Case cases[] = {{{2, 5, 6}, 3}, {{1, 2, 3, 4}, 2}, {{3, 8}, 2}};
  for (const Case& c : cases)
    for (int opts = 0; opts < 16; ++opts) {
      const bool g_on = opts & 1, b_on = opts & 2, ss_on = opts & 4, silu = opts & 8;
      const int64_t B = c.x[0], C = c.x[-1];
      std::vector<Tensor> in{test::random_normal(c.x)};
      int ig = -1, ib = -1, is = -1, it = -1;
      if (g_on) { ig = static_cast<int>(in.size()); in.push_back(test::random_tensor({C}, 0.5f, 1.5f)); }
      if (b_on) { ib = static_cast<int>(in.size()); in.push_back(test::random_tensor({C})); }
      if (ss_on) {
        is = static_cast<int>(in.size()); in.push_back(test::random_tensor({B, C}, -0.5f, 0.5f));
        it = static_cast<int>(in.size()); in.push_back(test::random_tensor({B, C}));
      }
      auto f = [&](const std::vector<Var>& v) {
        auto pick = [&](int i) { return i < 0 ? Var() : v[i]; };
        return group_norm(v[0], pick(ig), pick(ib), c.groups, 1e-5f, pick(is), pick(it), silu);
      };
      CAPTURE(c.x.str(), c.groups, g_on, b_on, ss_on, silu, test::run_seed());
      GradcheckResult r = gradcheck(f, in);
      INFO(r.report);
      CHECK(r.ok);
    }
}

TEST_CASE("group_norm records nothing under no_grad", "[cpu][autograd]") {
  Var x(test::random_tensor({2, 4, 6}), true);
  NoGrad ng;
  Var y = group_norm(x, {}, {}, 3);
  CHECK_FALSE(y.requires_grad());
  CHECK(tape_size() == 0);
}
