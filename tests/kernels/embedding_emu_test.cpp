// kernels/cuda/embedding.cu under the emulator ([emu]) and on a GPU ([cuda]): what the op table
// (op_table_test.cpp, every backend against the cpu path) cannot say: an id outside the table gives
// a NaN row forward (a kernel cannot throw; the cpu path names the id) and no gradient.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "core/device.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/embedding.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;

namespace {

// The launchers of kernels/embedding.h (emu:: or cuda::).
using Fwd = void (*)(const int64_t*, const void*, void*, DType, int64_t, int64_t, int64_t, void*);
using Bwd = void (*)(const void*, const int64_t*, void*, DType, int64_t, int64_t, int64_t, void*);

void check_out_of_range(Fwd fwd, Bwd bwd, Device dev) {
  const int64_t K = 11, D = 4;
  Tensor ids = Tensor::from_vector_i64({2, K + 3}, {2}, dev);
  Tensor table = random_tensor({K, D}).to(dev), out = Tensor::empty({2, D}, DType::f32, dev).poison_();
  fwd(ids.data<int64_t>(), table.raw(), out.raw(), DType::f32, 2, K, D, current_stream());
  const std::vector<float> o = out.to_vector();
  CHECK(std::isfinite(o[0]));
  CHECK(std::isnan(o[D]));
  // Backward: only id 2 contributes; every other row of the table's gradient is zero.
  Tensor dy = random_tensor({2, D}), dt = Tensor::empty({K, D}, DType::f32, dev).poison_();
  bwd(dy.to(dev).raw(), ids.data<int64_t>(), dt.raw(), DType::f32, 2, K, D, current_stream());
  const std::vector<float> g = dt.to_vector(), dyv = dy.to_vector();
  for (int64_t k = 0; k < K; ++k)
    for (int64_t d = 0; d < D; ++d) CHECK(g[k * D + d] == (k == 2 ? dyv[d] : 0.f));
}

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)
TEST_CASE("embedding under the emulator: an id outside the table gives a NaN row and no gradient",
          "[emu][kernels]") {
  for_each_order([] { check_out_of_range(emu::embedding_forward, emu::embedding_backward, Device::cpu()); });
}
#endif

TEST_CASE("embedding on the GPU: an id outside the table gives a NaN row and no gradient", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  check_out_of_range(cuda::embedding_forward, cuda::embedding_backward, Device::cuda(0));
#endif
}
