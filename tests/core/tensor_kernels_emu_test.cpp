// kernels/cuda/tensor_kernels.cu under the emulator ([emu]) and on a GPU ([cuda]) against the CPU paths of
// core/tensor.cpp. Tolerance everywhere: none. Fills replicate host-converted bits, casts use the
// same correctly rounded conversions, and the Philox fill uses explicitly rounded operations, so
// every element must have the same bits as on the CPU (NaN matching any NaN).
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "core/device.h"
#include "core/stream.h"
#include "core/tensor.h"
#include "core/tensor_cuda.h"
#include "tests/emu_test_util.h"
#include "tests/test_util.h"

using namespace diffuse;
using namespace diffuse::test;

namespace {

const DType kAll[] = {DType::f32, DType::bf16, DType::f16, DType::i32, DType::i64, DType::u8, DType::f64};

// Values every dtype pair can represent (u8 needs [0, 255], f16 |x| <= 65504), with fractions so
// that truncation to integers and rounding to 16-bit floats are both exercised.
Tensor cast_source(int64_t n, DType src, DType dst) {
  const bool unsigned_range = src == DType::u8 || dst == DType::u8;
  Tensor x = random_tensor({n}, unsigned_range ? 0.f : -3000.f, unsigned_range ? 255.f : 3000.f);
  return x.to(src);
}

}  // namespace

#if defined(DIFFUSE_HAVE_SIMT)

TEST_CASE("tensor_fill under the emulator writes the CPU's bits, aligned or not", "[emu][core]") {
  for_each_order([] {
    for (DType t : kAll) {
      for (int64_t n : {1L, 7L, 37L, 1001L}) {
        // A skew of one element makes the start unaligned for the 16-byte stores.
        for (int64_t skew : {0L, 1L}) {
          INFO(dtype_name(t) << " n=" << n << " skew=" << skew);
          const double value = t == DType::u8 ? 201.0 : (t == DType::i32 || t == DType::i64 ? -123457.0 : -2.7182818);
          Tensor got = Tensor::empty({n + 2 * skew + 1}, t).poison_();
          Tensor want = Tensor::full({n}, value, t);
          emu::tensor_fill(static_cast<char*>(got.raw()) + skew * dtype_size(t), t, n, value, nullptr);
          CHECK(bit_mismatches(got.slice(skew, skew + n), want) == 0);
          // Nothing outside the range was written.
          Tensor poison = Tensor::empty({1}, t).poison_();
          CHECK(bit_mismatches(got.slice(skew + n, skew + n + 1), poison) == 0);
          if (skew) CHECK(bit_mismatches(got.slice(0, 1), poison) == 0);
        }
      }
    }
  });
}

TEST_CASE("tensor_cast under the emulator equals Tensor::to on the CPU for every dtype pair", "[emu][core]") {
  for_each_order([] {
    for (DType s : kAll) {
      for (DType d : kAll) {
        if (s == d) continue;
        for (int64_t n : {1L, 333L}) {
          INFO(dtype_name(s) << " -> " << dtype_name(d) << " n=" << n);
          Tensor x = cast_source(n, s, d);
          Tensor want = x.to(d);
          Tensor got = Tensor::empty({n}, d).poison_();
          emu::tensor_cast(x.raw(), s, got.raw(), d, n, nullptr);
          CHECK(bit_mismatches(got, want) == 0);
        }
      }
    }
  });
}

TEST_CASE("tensor_cast rounds to nearest even and keeps NaN, inf and overflow as the CPU does", "[emu][core]") {
  // 1 + 2^-8 is a bf16 tie (rounds down to even), 1 + 3 * 2^-8 rounds up; 65520 overflows f16 to inf.
  const std::vector<float> v = {1.00390625f, 1.01171875f, -1.00390625f, 65520.f, -70000.f, 1e-8f, -0.0f,
                                INFINITY, -INFINITY, NAN, 3.5f, -2.5f};
  Tensor x = Tensor::from_vector(v, {static_cast<int64_t>(v.size())});
  for (DType d : {DType::bf16, DType::f16}) {
    INFO(dtype_name(d));
    Tensor got = Tensor::empty(x.shape(), d).poison_();
    emu::tensor_cast(x.raw(), DType::f32, got.raw(), d, x.numel(), nullptr);
    CHECK(bit_mismatches(got, x.to(d)) == 0);
  }
  // Integers: truncation toward zero.
  Tensor got = Tensor::empty({4}, DType::i32).poison_();
  Tensor y = Tensor::from_vector({3.5f, -2.5f, 0.99f, -0.99f}, {4});
  emu::tensor_cast(y.raw(), DType::f32, got.raw(), DType::i32, 4, nullptr);
  CHECK(got.to_vector_i64() == std::vector<int64_t>{3, -2, 0, 0});
}

TEST_CASE("tensor_philox_fill under the emulator draws the CPU's stream bit for bit", "[emu][core]") {
  for_each_order([] {
    for (int64_t n : {1L, 3L, 6L, 1001L}) {
      for (int64_t skew : {0L, 1L}) {
        INFO("n=" << n << " skew=" << skew);
        const uint64_t seed = next_seed(), offset = next_seed() % 1000;
        Tensor buf = Tensor::empty({n + skew + 1}).poison_();
        float* p = buf.data<float>() + skew;
        Tensor got = buf.slice(skew, skew + n);

        emu::tensor_philox_fill(p, n, seed, offset, true, 0.f, 1.f, nullptr);
        CHECK(bit_mismatches(got, Tensor::randn({n}, seed, offset)) == 0);

        emu::tensor_philox_fill(p, n, seed, offset, true, 0.25f, 1.7f, nullptr);
        CHECK(bit_mismatches(got, Tensor::empty({n}).normal_(seed, offset, 0.25f, 1.7f)) == 0);

        emu::tensor_philox_fill(p, n, seed, offset, false, -0.3f, 2.1f, nullptr);
        CHECK(bit_mismatches(got, Tensor::rand({n}, seed, offset, -0.3f, 2.1f)) == 0);
        CHECK(std::isnan(buf.to_vector()[static_cast<size_t>(n + skew)]));
      }
    }
  });
}

TEST_CASE("tensor_upload under the emulator copies the bytes, across chunks", "[emu][core]") {
  for_each_order([] {
    for (int64_t n : {1L, 4000L, 9001L}) {
      Tensor src = Tensor::rand({n}, next_seed(), 0, 0.f, 255.f).to(DType::u8);
      Tensor dst = Tensor::empty({n + 1}, DType::u8).poison_();
      emu::tensor_upload(dst.raw(), src.raw(), static_cast<size_t>(n), nullptr);
      CHECK(bit_mismatches(dst.slice(0, n), src) == 0);
      CHECK(static_cast<const uint8_t*>(dst.raw())[n] == 0x7f);  // nothing past the end
    }
  });
}

#endif  // DIFFUSE_HAVE_SIMT

TEST_CASE("tensor kernels on the GPU equal the CPU paths bit for bit", "[cuda][core]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  const int64_t n = 100003;  // odd, several blocks, a ragged Philox tail
  // f64 tensors live on the cpu only (gradchecks): every other dtype.
  std::vector<DType> kDevice;
  for (DType t : kAll)
    if (t != DType::f64) kDevice.push_back(t);
  for (DType t : kDevice) {
    INFO("fill " << dtype_name(t));
    Tensor got = Tensor::empty({n}, t, gpu);
    cuda::tensor_fill(got.raw(), t, n, 7.0, current_stream());
    CHECK(bit_mismatches(got.to(Device::cpu()), Tensor::full({n}, 7.0, t)) == 0);
  }
  for (DType s : kDevice) {
    for (DType d : kDevice) {
      if (s == d) continue;
      INFO("cast " << dtype_name(s) << " -> " << dtype_name(d));
      Tensor x = cast_source(n, s, d);
      Tensor xd = x.to(gpu);
      Tensor got = Tensor::empty({n}, d, gpu);
      cuda::tensor_cast(xd.raw(), s, got.raw(), d, n, current_stream());
      CHECK(bit_mismatches(got.to(Device::cpu()), x.to(d)) == 0);
    }
  }
  const uint64_t seed = next_seed();
  Tensor g = Tensor::empty({n}, DType::f32, gpu);
  cuda::tensor_philox_fill(g.data<float>(), n, seed, 5, true, 0.f, 1.f, current_stream());
  CHECK(bit_mismatches(g.to(Device::cpu()), Tensor::randn({n}, seed, 5)) == 0);
  cuda::tensor_philox_fill(g.data<float>(), n, seed, 5, false, -1.f, 3.f, current_stream());
  CHECK(bit_mismatches(g.to(Device::cpu()), Tensor::rand({n}, seed, 5, -1.f, 3.f)) == 0);
  // Uploads: the bytes arrive in stream order, across more than one 4000-byte chunk.
  Tensor src = Tensor::rand({9001}, next_seed(), 0, 0.f, 255.f).to(DType::u8);
  Tensor dst = Tensor::empty({9001}, DType::u8, gpu).poison_();
  cuda::tensor_upload(dst.raw(), src.raw(), 9001, current_stream());
  CHECK(bit_mismatches(dst.to(Device::cpu()), src) == 0);
#endif
}
