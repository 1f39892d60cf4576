// kernels/cuda/resample.cu under the emulator ([emu]) and on a GPU ([cuda]) against the reference
// loops of kernels/resample.h. Upsampling and the pool's backward move values (times 1 or 1/4, exact
// in binary): bitwise equal. The 2x2 sums add in the reference's order: bitwise equal in f32; bf16
// outputs are the f32 result rounded once, as the reference's f32 result .to(bf16).
#include <catch2/catch.hpp>

#include "core/device.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "kernels/cuda/resample.h"
#include "kernels/resample.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;

namespace {

struct ResampleOps {
  decltype(&emu::upsample_nearest2x_forward) up_fwd, up_bwd, pool_fwd, pool_bwd;
  Device device;
};
#define DF_RESAMPLE_OPS(ns, dev)                                                                      \
  ResampleOps {                                                                                     \
    &ns::upsample_nearest2x_forward, &ns::upsample_nearest2x_backward, &ns::avg_pool2x_forward,      \
        &ns::avg_pool2x_backward, dev                                                               \
  }

void check_resample(const ResampleOps& ops) {
  // C a whole number of packs (16 f32 / 8 bf16) and not (3, odd); batch 1; non-square.
  const Shape smalls[] = {{2, 3, 4, 16}, {1, 2, 5, 3}, {3, 4, 4, 24}, {1, 1, 1, 1}};
  for (DType t : {DType::f32, DType::bf16}) {
    for (const Shape& s : smalls) {
      INFO(dtype_name(t) << " small grid " << s.str());
      const Shape big{s[0], 2 * s[1], 2 * s[2], s[3]};
      Tensor xs = random_tensor(s).to(t), xb = random_tensor(big).to(t);
      auto run = [&](decltype(ops.up_fwd) f, const Tensor& in, const Shape& out_shape) {
        Tensor o = Tensor::empty(out_shape, t, ops.device).poison_();
        f(in.to(ops.device).raw(), o.raw(), t, s[0], s[1], s[2], s[3], current_stream());
        return o.to(Device::cpu());
      };
      // The references run in f32 on the bf16-exact inputs, then round once, like the kernels.
      auto want = [&](void (*ref)(const Tensor&, Tensor&), const Tensor& in, const Shape& out_shape) {
        Tensor o = Tensor::empty(out_shape);
        ref(in.to(DType::f32), o);
        return o.to(t);
      };
      CHECK(bit_mismatches(run(ops.up_fwd, xs, big), want(kernels::ref::upsample_nearest2x_forward, xs, big)) == 0);
      CHECK(bit_mismatches(run(ops.up_bwd, xb, s), want(kernels::ref::upsample_nearest2x_backward, xb, s)) == 0);
      CHECK(bit_mismatches(run(ops.pool_fwd, xb, s), want(kernels::ref::avg_pool2x_forward, xb, s)) == 0);
      CHECK(bit_mismatches(run(ops.pool_bwd, xs, big), want(kernels::ref::avg_pool2x_backward, xs, big)) == 0);
    }
  }
}

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)
TEST_CASE("upsample and average pool under the emulator equal the reference", "[emu][kernels]") {
  for_each_order([] { check_resample(DF_RESAMPLE_OPS(emu, Device::cpu())); });
}
#endif

TEST_CASE("upsample and average pool on the GPU equal the reference", "[cuda][kernels]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  check_resample(DF_RESAMPLE_OPS(cuda, Device::cuda(0)));
#endif
}
