// kernels/cuda/softmax.cu under the emulator: what the op table (op_table_test.cpp, every backend of
// softmax and cross-entropy against the reference) cannot say: a label out of range gives a NaN row
// loss (a kernel cannot throw; the cpu path names the label) instead of reading out of bounds.
#include <catch2/catch.hpp>

#include <cmath>

#include "core/tensor.h"
#include "kernels/softmax.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;

#if defined(DIFFUSE_HAVE_SIMT)

TEST_CASE("cross entropy under the emulator: a label out of range gives a NaN row loss", "[emu][kernels]") {
  for_each_order([] {
    Tensor logits = random_tensor({2, 3});
    Tensor labels = Tensor::from_vector_i64({1, 3}, {2});
    Tensor lse = Tensor::empty({2}), rl = Tensor::empty({2}), loss = Tensor::empty({1});
    emu::cross_entropy_forward(logits.data<float>(), labels.data<int64_t>(), lse.data<float>(), rl.data<float>(),
                               loss.data<float>(), 2, 3, nullptr);
    CHECK(std::isfinite(rl.to_vector()[0]));
    CHECK(std::isnan(rl.to_vector()[1]));
  });
}

#endif  // DIFFUSE_HAVE_SIMT
