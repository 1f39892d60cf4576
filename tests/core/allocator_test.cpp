// core/allocator.h and Tensor::empty at the edges: sizes that would wrap around, the host
// allocation limit that guards building a model from an untrusted config, and the CUDA
// allocator's out-of-memory message.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>

#include "core/allocator.h"
#include "core/check.h"
#include "core/device.h"
#include "core/tensor.h"

using namespace diffuse;
using Catch::Matchers::Contains;

TEST_CASE("allocation size classes round up and never wrap", "[cpu][core][reliability]") {
  CHECK(allocation_size_class(0) == 64);
  CHECK(allocation_size_class(65) == 128);
  CHECK(allocation_size_class((size_t{1} << 20) + 1) == (size_t{1} << 20) + (size_t{1} << 18));
  // Before the check, SIZE_MAX - 5 rounded up to 0: a tiny block for a huge request.
  const size_t huge = std::numeric_limits<size_t>::max() - 5;
  CHECK_THROWS_WITH(allocation_size_class(huge), Contains("more than any machine has"));
  CHECK_THROWS_AS(cpu_allocate(huge), Error);
}

TEST_CASE("Tensor::empty refuses shapes whose size overflows 64 bits", "[cpu][core][reliability]") {
  const int64_t big = int64_t{1} << 40;
  CHECK_THROWS_WITH(Tensor::empty({big, big}), Contains("overflows 64 bits"));
  // 2^61 elements fit in int64, their 2^63 bytes do not.
  CHECK_THROWS_WITH(Tensor::empty({int64_t{1} << 61}, DType::f32), Contains("overflows 64 bits"));
  CHECK(Tensor::empty({0, big, big}).numel() == 0);
}

TEST_CASE("HostAllocationLimit caps what a scope may allocate", "[cpu][core][reliability]") {
  {
    HostAllocationLimit limit(1 << 20, "the test's model");
    Tensor a = Tensor::empty({1000});  // 4000 bytes: within the limit
    CHECK_THROWS_WITH(Tensor::empty({1 << 20}), Contains("the test's model needs more than 1048576 bytes"));
    {
      HostAllocationLimit inner(100, "the inner scope");
      CHECK_THROWS_WITH(Tensor::empty({1000}), Contains("the inner scope"));
    }
    Tensor b = Tensor::empty({1000});  // the outer limit is back in force, and not exhausted
    CHECK(b.numel() == 1000);
  }
  Tensor c = Tensor::empty({1 << 20});  // no limit outside the scope
  CHECK(c.numel() == 1 << 20);
}

TEST_CASE("CUDA out of memory names the bytes asked for and the bytes free", "[cuda][core][reliability]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const int64_t n = int64_t{1} << 48;  // 2^50 bytes of f32: a pebibyte, more than any GPU has
  std::string msg;
  try {
    Tensor t = Tensor::empty({n}, DType::f32, Device::cuda(0));
  } catch (const Error& e) {
    msg = e.what();
  }
  INFO(msg);
  CHECK_THAT(msg, Contains("CUDA out of memory on cuda:0"));
  CHECK_THAT(msg, Contains("asked for 1125899906842624 bytes"));
  CHECK_THAT(msg, Contains("bytes free of"));
  // The failure left the allocator and the device usable.
  Tensor small = Tensor::full({1024}, 3.0, DType::f32, Device::cuda(0));
  CHECK(small.to(Device::cpu()).to_vector()[1023] == 3.0f);
#endif
}
