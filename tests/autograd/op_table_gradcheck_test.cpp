// The op table's gradchecks (tests/kernels/op_table.h): every case with an autograd entry, its
// backward against central finite differences in f64 (autograd/gradcheck.h; the case's options,
// by default 1e-6 abs + 1e-5 rel, argued there) on its fresh inputs.
#include <catch2/catch.hpp>

#include "autograd/gradcheck.h"
#include "tests/kernels/op_table.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;

TEST_CASE("op table: every op's backward matches central differences in f64", "[cpu][autograd]") {
  int ran = 0;
  for (const OpCase& c : op_table()) {
    if (!c.autograd) continue;
    const ag::GradcheckResult r = ag::gradcheck(c.autograd, c.inputs(DType::f64), c.gradcheck_options, c.grad_fixed);
    INFO(c.name << ": " << r.report << " (seed " << run_seed() << ")");
    CHECK(r.ok);
    ++ran;
  }
  CHECK(ran > 0);
}
