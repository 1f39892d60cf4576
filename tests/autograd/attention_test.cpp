// softmax_last and attention backward against central finite differences in f64.
#include <catch2/catch.hpp>

#include "autograd/attention.h"
#include "autograd/gradcheck.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::ag;

TEST_CASE("softmax_last gradcheck", "[cpu][autograd]") {
  for (Shape s : {Shape{3, 5}, Shape{2, 2, 7}, Shape{1, 1}}) {
    GradcheckResult r = gradcheck([](const std::vector<Var>& v) { return softmax_last(v[0]); },
                                  {test::random_tensor(s, -3.f, 3.f)});
    CAPTURE(s.str());
    INFO(r.report);
    CHECK(r.ok);
  }
}

TEST_CASE("attention gradcheck: self and cross, heads 1 and 2", "[cpu][autograd]") {
  struct Case {
    int64_t B, Tq, Tk, C;
    int heads;
  };
  // Self (Tq = Tk), cross (Tk < Tq and Tk > Tq), odd T=5, C=6, batch 1.
  const Case cases[] = {{2, 5, 5, 6, 1}, {2, 5, 5, 6, 2}, {1, 5, 3, 4, 2}, {1, 3, 7, 6, 1}, {1, 4, 2, 4, 2}};
  for (const Case& c : cases) {
    CAPTURE(c.B, c.Tq, c.Tk, c.C, c.heads);
    GradcheckResult r = gradcheck([&](const std::vector<Var>& v) { return attention(v[0], v[1], v[2], c.heads); },
                                  {test::random_tensor({c.B, c.Tq, c.C}, -2.f, 2.f),
                                   test::random_tensor({c.B, c.Tk, c.C}, -2.f, 2.f),
                                   test::random_tensor({c.B, c.Tk, c.C})});
    INFO(r.report);
    CHECK(r.ok);
  }
}

TEST_CASE("attention gradcheck: q, k, v the same variable (gradients accumulate)", "[cpu][autograd]") {
  for (int heads : {1, 2}) {
    GradcheckResult r = gradcheck([&](const std::vector<Var>& v) { return attention(v[0], v[0], v[0], heads); },
                                  {test::random_tensor({2, 5, 6}, -2.f, 2.f)});
    CAPTURE(heads);
    INFO(r.report);
    CHECK(r.ok);
  }
}
