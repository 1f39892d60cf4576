// kernels/cuda/embedding.cu under the emulator ([emu]) and on a GPU ([cuda]) against the cpu path
// of kernels/embedding.h. The lookup copies rows: equal. The backward adds the rows of each id in
// batch order, as the cpu loop does: equal in f32; bf16 is the f32 sum rounded once.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "core/device.h"
#include "core/philox.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/cuda/embedding.h"
#include "kernels/embedding.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;

namespace {

template <class Fwd, class Bwd>
void check_embedding(Fwd&& fwd, Bwd&& bwd, Device dev) {
  const int64_t K = 11, D = 300;
  for (int64_t B : {1L, 7L, 40L}) {
    for (DType t : {DType::f32, DType::bf16}) {
      INFO("B " << B << " " << dtype_name(t));
      std::vector<int64_t> idv(static_cast<size_t>(B));
      for (int64_t b = 0; b < B; ++b) idv[b] = static_cast<int64_t>(philox_uniform(next_seed(), 0, 0) * K) % K;
      idv[0] = K - 1;  // the null label row (classifier-free guidance) is the last
      Tensor ids = Tensor::from_vector_i64(idv, {B});
      Tensor table = random_tensor({K, D}).to(t), dy = random_tensor({B, D}).to(t);
      Tensor want_out = kernels::embedding_forward(ids, table.to(DType::f32)).to(t);
      Tensor want_dt = kernels::embedding_backward(dy.to(DType::f32), ids, Shape{K, D}).to(t);
      Tensor idd = ids.to(dev), out = Tensor::empty({B, D}, t, dev).poison_(), dt = Tensor::empty({K, D}, t, dev).poison_();
      fwd(idd.template data<int64_t>(), table.to(dev).raw(), out.raw(), t, B, K, D, current_stream());
      bwd(dy.to(dev).raw(), idd.template data<int64_t>(), dt.raw(), t, B, K, D, current_stream());
      CHECK(bit_mismatches(out.to(Device::cpu()), want_out) == 0);
      CHECK(bit_mismatches(dt.to(Device::cpu()), want_dt) == 0);
    }
  }
  // An id out of range: a NaN row forward (a kernel cannot throw), no contribution backward.
  Tensor ids = Tensor::from_vector_i64({2, K + 3}, {2}, dev);
  Tensor table = random_tensor({K, 4}).to(dev), out = Tensor::empty({2, 4}, DType::f32, dev).poison_();
  fwd(ids.template data<int64_t>(), table.raw(), out.raw(), DType::f32, 2, K, 4, current_stream());
  const std::vector<float> o = out.to_vector();
  CHECK(std::isfinite(o[0]));
  CHECK(std::isnan(o[4]));
}

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)
TEST_CASE("embedding lookup and backward under the emulator", "[emu][kernels]") {
  for_each_order([] { check_embedding(emu::embedding_forward, emu::embedding_backward, Device::cpu()); });
}
#endif

TEST_CASE("embedding lookup and backward on the GPU", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  check_embedding(cuda::embedding_forward, cuda::embedding_backward, Device::cuda(0));
#endif
}
