// core/allocator.h and Tensor::empty at the edges: sizes that would wrap around, the host
// allocation limit that guards building a model from an untrusted config, and the CUDA
// allocator's out-of-memory message.
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>

#include "core/allocator.h"
#include "core/check.h"
#include "core/device.h"
#include "core/graph.h"
#include "core/stream.h"
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

// The device allocator's free lists, host bookkeeping only: streams are opaque keys here.
TEST_CASE("device free lists hand a block to another stream only once its work is complete", "[cpu][core]") {
  DeviceBlockCache c;
  int a_tag = 0, b_tag = 0, blocks[4] = {};
  void* const A = &a_tag;
  void* const B = &b_tag;
  void* const legacy = nullptr;
  // Freed on A: A may reuse it; B and the legacy stream may not (no event between the streams).
  c.put(&blocks[0], 256, A, legacy);
  CHECK(c.cached_bytes() == 256);
  CHECK(c.take(256, B) == nullptr);
  CHECK(c.take(256, legacy) == nullptr);
  CHECK(c.take(512, A) == nullptr);  // another size class
  CHECK(c.take(256, A) == &blocks[0]);
  CHECK(c.cached_bytes() == 0);
  // Idle blocks (their work is done) serve any stream.
  c.put_idle(&blocks[1], 256);
  CHECK(c.take(256, B) == &blocks[1]);
  // A stream's own blocks come before idle ones.
  c.put_idle(&blocks[1], 256);
  c.put(&blocks[2], 256, B, legacy);
  CHECK(c.take(256, B) == &blocks[2]);
  CHECK(c.take(256, B) == &blocks[1]);
  CHECK(c.take_idle(256) == nullptr);
}

TEST_CASE("a destroyed stream's cached blocks become reusable by every stream", "[cpu][core]") {
  DeviceBlockCache c;
  int a_tag = 0, b_tag = 0, blocks[3] = {};
  void* const A = &a_tag;
  void* const B = &b_tag;
  c.put(&blocks[0], 1024, A, nullptr);
  c.put(&blocks[1], 2048, A, nullptr);
  c.retire(A);  // after its work is complete
  CHECK(c.retired(A));
  CHECK(c.cached_bytes() == 3072);
  CHECK(c.take(1024, B) == &blocks[0]);
  CHECK(c.take(2048, nullptr) == &blocks[1]);
  // A tensor allocated on A and freed after A is gone: cached under the freeing thread's stream,
  // where its last use most likely was, not under the dead handle that nothing will allocate on.
  c.put(&blocks[2], 1024, A, B);
  CHECK(c.take(1024, A) == nullptr);
  CHECK(c.take(1024, B) == &blocks[2]);
  // A new stream that gets the same handle is an ordinary stream again.
  c.revive(A);
  CHECK_FALSE(c.retired(A));
  c.put(&blocks[2], 1024, A, B);
  CHECK(c.take(1024, B) == nullptr);
  CHECK(c.take(1024, A) == &blocks[2]);
  CHECK_THROWS_AS(c.retire(nullptr), Error);  // the legacy stream lives for the process
  int released = 0;
  c.put(&blocks[0], 64, B, nullptr);
  c.put_idle(&blocks[1], 64);
  c.release_all([&](void*) { ++released; });
  CHECK(released == 2);
  CHECK(c.cached_bytes() == 0);
}

TEST_CASE("blocks of a destroyed stream and of a destroyed graph are reused", "[cuda][core]") {
#if defined(DIFFUSE_HAVE_CUDA)
  if (!cuda_available()) return;
  const Device gpu = Device::cuda(0);
  // Size classes that nothing else in this process asks for, so the counts below are this test's.
  const int64_t n1 = 3 * 1024 * 1024 + 17, n2 = 5 * 1024 * 1024 + 33, n3 = 7 * 1024 * 1024 + 5;
  Tensor late;
  {
    CudaStream s(gpu);
    StreamGuard guard(s.stream());
    Tensor t = Tensor::full({n1}, 1.0, DType::f32, gpu);
    late = Tensor::full({n3}, 1.0, DType::f32, gpu);
    synchronize(gpu);
  }  // t's block was cached under s; s is gone
  MemoryStats m0 = cuda_memory_stats(gpu.index);
  {
    Tensor again = Tensor::empty({n1}, DType::f32, gpu);  // on the legacy stream
    MemoryStats m1 = cuda_memory_stats(gpu.index);
    CHECK(m1.system_allocs == m0.system_allocs);
    CHECK(m1.cache_hits == m0.cache_hits + 1);
  }
  // A tensor that outlived its stream, freed now on the legacy stream: reused there.
  late = Tensor();
  m0 = cuda_memory_stats(gpu.index);
  {
    Tensor again = Tensor::empty({n3}, DType::f32, gpu);
    CHECK(cuda_memory_stats(gpu.index).system_allocs == m0.system_allocs);
  }
  // A graph's pool: its blocks serve other streams once the graph is gone.
  {
    CudaStream s(gpu);
    StreamGuard guard(s.stream());
    Tensor x = Tensor::full({16}, 2.0, DType::f32, gpu);
    {
      CudaGraph g;
      g.begin(gpu);
      { Tensor tmp = Tensor::empty({n2}, DType::f32, gpu); tmp.fill_(3.0); }
      g.end();
      g.replay();
    }
    m0 = cuda_memory_stats(gpu.index);
    Tensor again = Tensor::empty({n2}, DType::f32, gpu);
    CHECK(cuda_memory_stats(gpu.index).system_allocs == m0.system_allocs);
    synchronize(gpu);
  }
#endif
}
