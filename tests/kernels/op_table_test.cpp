// The one harness that runs every backend of every op of the op table (tests/kernels/op_table.h,
// defined in op_table.cpp) against the op's reference: [cpu] the fast path, [emu] the CUDA kernel
// under the emulator in every thread order, [cuda] the same kernel on a GPU (the simulated device
// in a DIFFUSE_CUDA=SIM build, where the tier is labelled sim). Outputs are poisoned before a
// backend writes them; inputs are fresh per run.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstddef>
#include <vector>

#include "core/device.h"
#include "core/tensor.h"
#include "tests/emu_test_util.h"
#include "tests/kernels/op_table.h"
#include "tests/test_util.h"

namespace diffuse::test {

namespace {

// Every element within atol + atol_each[i] + rtol |want[i]|, and no NaN on either side.
bool within_each(const Tensor& got, const Tensor& want, const Tolerance& tol) {
  const std::vector<double> g = f64_values(got.to(DType::f64)), w = f64_values(want.to(DType::f64));
  const std::vector<double> b = f64_values(tol.atol_each.to(DType::f64));
  if (g.size() != w.size() || b.size() != w.size()) return false;
  for (size_t i = 0; i < w.size(); ++i)
    if (!(std::fabs(g[i] - w[i]) <= tol.atol + b[i] + tol.rtol * std::fabs(w[i]))) return false;
  return true;
}

void check_outputs(const OpCase& c, Backend b, DType t, const Tensors& in, const Tensors& got, const Tensors& want) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const Tolerance tol = c.tolerance(b, t, i, in, want);
    INFO(c.name << " on the " << backend_name(b) << " in " << dtype_name(t) << ", output " << i << " (" << tol.why
                << "), seed " << run_seed());
    REQUIRE(got[i].shape() == want[i].shape());
    REQUIRE(got[i].dtype() == want[i].dtype());
    if (tol.bitwise) {
      CHECK(bit_mismatches(got[i], want[i]) == 0);
    } else if (tol.atol_each.defined()) {
      INFO(compare(got[i], want[i]).str());
      CHECK(within_each(got[i], want[i], tol));
    } else {
      INFO(compare(got[i], want[i]).str());
      CHECK(allclose(got[i], want[i], tol.rtol, tol.atol));
    }
  }
}

// Runs `backend` of every case that has it, in each of its dtypes; returns how many ran.
int run_backend(Backend b, const std::vector<OpCase>& table) {
  int ran = 0;
  for (const OpCase& c : table) {
    const auto& run = b == Backend::cpu ? c.cpu : b == Backend::emu ? c.emu : c.cuda;
    if (!run) continue;
    for (DType t : b == Backend::cpu ? c.cpu_dtypes : c.device_dtypes) {
      const Tensors in = c.inputs(t);
      check_outputs(c, b, t, in, run(in, t), c.reference(in, t, b));
      ++ran;
    }
  }
  return ran;
}

}  // namespace

}  // namespace diffuse::test

using namespace diffuse;
using namespace diffuse::test;

TEST_CASE("op table: every op's cpu fast path matches its reference", "[cpu][kernels]") {
  CHECK(run_backend(Backend::cpu, op_table()) > 0);
}

#if defined(DIFFUSE_HAVE_SIMT)
TEST_CASE("op table: every op's CUDA kernel under the emulator matches its reference", "[emu][kernels]") {
  const std::vector<OpCase> table = op_table();
  for_each_order([&] { CHECK(run_backend(Backend::emu, table) > 0); });
}
#endif

TEST_CASE("op table: every op's CUDA kernel on the GPU matches its reference", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  CHECK(run_backend(Backend::cuda, op_table()) > 0);
#endif
}
