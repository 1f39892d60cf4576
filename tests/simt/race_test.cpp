// The shared-memory race check (kernels/simt/race.h): conflicts between two threads with no
// barrier between them are faults naming both threads and both source lines, under every thread
// order; what a barrier, a __syncwarp of both lanes, or atomics order is not. This file is
// compiled with the check's instrumentation (kernels/simt/race_check.cmake) wherever the build
// has it: not in the sanitizer builds, where AddressSanitizer's instrumentation takes its place.
#include "tests/simt/simt_test_util.h"

#include <string>

using namespace diffuse::simt;
using namespace diffuse::simt::test;

#if DF_SIMT_RACECHECK

namespace {

// The source line of each planted access, for the messages.
constexpr int kWriteWriteLine = __LINE__ + 3;
__global__ void write_write_kernel(int* out) {
  DF_SHARED(int, flag, 4);
  if (threadIdx.x == 0 || threadIdx.x == 40) flag[2] = static_cast<int>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = flag[2];
}

constexpr int kReadLine = __LINE__ + 5, kWriteLine = __LINE__ + 6;
// A missing barrier between a load into shared memory and the reads of a neighbour's slot.
__global__ void write_read_kernel(const float* x, float* y) {
  DF_SHARED(float, tile, 64);
  const int t = threadIdx.x;
  const float left = t > 0 ? tile[t - 1] : 0.0f;
  tile[t] = x[t];
  __syncthreads();
  y[t] = left + tile[t];
}

// Shared memory through a raw pointer, in a 2-D array, and as 16-byte words: the check sees the
// bytes the compiled code touches, however they are reached.
constexpr int kVecLine = __LINE__ + 1;
DF_DEVICE_INLINE void store4(float* row, int c, float v) { *reinterpret_cast<float4*>(row + c) = make_float4(v, v, v, v); }
__global__ void vector_overlap_kernel(float* out) {
  DF_SHARED2(float, grid2, 4, 16);
  const int t = threadIdx.x;  // 8 threads: threads 2k and 2k + 1 both store columns [4k, 4k + 4)
  store4(grid2[1], 4 * (t / 2), 1.0f);
  __syncthreads();
  out[t] = grid2[1][t];
}

constexpr int kDynLine = __LINE__ + 4;
__global__ void dynamic_race_kernel(int* out) {
  int* d = DF_DYNAMIC_SHARED(int);
  const int t = threadIdx.x;
  d[t / 2] = t;  // two threads per slot
  __syncthreads();
  out[t] = d[t / 2];
}

// Lanes of one warp exchange through shared memory with __syncwarp between: ordered, no race.
// Then a lane of another warp reads the same slots with no barrier: a race (a __syncwarp orders
// only its own lanes).
constexpr int kCrossWarpLine = __LINE__ + 10;
__global__ void syncwarp_kernel(int* out, int cross_warp) {
  DF_SHARED(int, s, 64);
  const int t = threadIdx.x, lane = t % 32;
  s[t] = t;
  __syncwarp();
  int v = s[(t & ~31) + 31 - lane];
  __syncwarp();
  s[t] = v + 1;
  __syncwarp();
  if (cross_warp && t == 40) v += s[3];
  out[t] = v + s[(t & ~31) + (lane + 1) % 32];
}

// A shuffle does not order memory: lane 1 reads what lane 0 wrote, "after" a shuffle.
constexpr int kShuffleWriteLine = __LINE__ + 3, kShuffleReadLine = __LINE__ + 5;
__global__ void shuffle_is_no_fence_kernel(int* out) {
  DF_SHARED(int, s, 1);
  if (threadIdx.x == 0) s[0] = 7;
  const int v = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), 0);
  out[threadIdx.x] = threadIdx.x == 1 ? s[0] + v : v;
}

// Correct kernels the check must pass.
// Neighbouring bf16 of one 32-bit word written by different threads: different bytes, no race.
__global__ void bf16_neighbours_kernel(const __nv_bfloat16* x, float* out) {
  DF_SHARED(__nv_bfloat16, h, 128);
  const int t = threadIdx.x;
  h[t] = x[t];
  __syncthreads();
  out[t] = __bfloat162float(h[127 - t]);
}

// Every thread adds into one counter with atomicAdd, then one thread reads it after a barrier.
__global__ void atomic_counter_kernel(int* out) {
  DF_SHARED(int, count, 1);
  if (threadIdx.x == 0) count[0] = 0;
  __syncthreads();
  atomicAdd(&count[0], 1);
  __syncthreads();
  out[threadIdx.x] = count[0];
}

// ... but a plain read of the counter while other threads may still add is a race.
constexpr int kAtomicLine = __LINE__ + 5, kPlainReadLine = __LINE__ + 6;
__global__ void atomic_then_read_kernel(int* out) {
  DF_SHARED(int, count, 1);
  if (threadIdx.x == 0) count[0] = 0;
  __syncthreads();
  atomicAdd(&count[0], 1);
  out[threadIdx.x] = count[0];
}

// Every thread reads the same slot (a broadcast), several barrier phases in a row, with one
// thread rewriting it between barriers; and threads that exit early.
__global__ void broadcast_kernel(int* out, int n) {
  DF_SHARED(int, s, 1);
  const int t = threadIdx.x;
  if (t == 0) s[0] = 1;
  __syncthreads();
  int acc = 0;
  for (int it = 0; it < 3; ++it) {
    acc += s[0];
    __syncthreads();
    if (t == it) s[0] = acc + it;
    __syncthreads();
  }
  if (t >= n) return;
  out[t] = acc + s[0];
}

std::string must_contain_twice(const std::string& text, const std::string& part) {
  const std::size_t a = text.find(part);
  if (a == std::string::npos) return "missing";
  return text.find(part, a + 1) == std::string::npos ? "once" : "twice";
}

std::string line(int l) { return "race_test.cpp:" + std::to_string(l); }

}  // namespace

TEST_CASE("two threads writing one shared byte with no barrier between is a race", "[emu][simt]") {
  for_each_order([] {
    std::vector<int> out(64);
    const std::string msg = expect_fault(
        FaultKind::shared_race,
        {"shared memory race on flag[2] (DF_SHARED at tests/simt/race_test.cpp:", "write_write_kernel", "writes it",
         "wrote it", "thread (0,0,0)", "thread (40,0,0)", "block (0,0,0) thread"},
        [&] { DF_LAUNCH(write_write_kernel, 1, 64, 0, nullptr, out.data()); });
    CHECK(must_contain_twice(msg, line(kWriteWriteLine)) == "twice");
  });
}

TEST_CASE("a read of a slot another thread writes before the barrier is a race", "[emu][simt]") {
  std::vector<float> x(64, 1.0f), y(64);
  for_each_order([&] {
    const std::string msg =
        expect_fault(FaultKind::shared_race, {"tile[", line(kReadLine).c_str(), line(kWriteLine).c_str(), "in write_read_kernel"},
                     [&] { DF_LAUNCH(write_read_kernel, 2, 64, 0, nullptr, x.data(), y.data()); });
    // Whichever comes first in this order: a read, then the neighbour's write; or the other way.
    CHECK((msg.find("reads it") != std::string::npos || msg.find("writes it") != std::string::npos));
  });
}

TEST_CASE("the check sees accesses through raw pointers, 16-byte stores and 2-D arrays", "[emu][simt]") {
  std::vector<float> out(8);
  for_each_order([&] {
    const std::string msg =
        expect_fault(FaultKind::shared_race, {"grid2[1][", "DF_SHARED at tests/simt/race_test.cpp:"},
                     [&] { DF_LAUNCH(vector_overlap_kernel, 1, 8, 0, nullptr, out.data()); });
    // The store in the helper, reached from the kernel's call of it.
    CHECK(must_contain_twice(msg, line(kVecLine)) == "twice");
    CHECK(must_contain_twice(msg, "inlined into vector_overlap_kernel at tests/simt/" + line(kVecLine + 4)) == "twice");
  });
}

TEST_CASE("races in dynamic shared memory", "[emu][simt]") {
  std::vector<int> out(64);
  for_each_order([&] {
    const std::string msg = expect_fault(FaultKind::shared_race, {"of the dynamic shared memory", "dynamic_race_kernel"},
                                         [&] { DF_LAUNCH(dynamic_race_kernel, 1, 64, 32 * sizeof(int), nullptr, out.data()); });
    CHECK(must_contain_twice(msg, line(kDynLine)) == "twice");
  });
}

TEST_CASE("__syncwarp orders its lanes' accesses, and only theirs", "[emu][simt]") {
  std::vector<int> out(64);
  for_each_order([&] {
    DF_LAUNCH(syncwarp_kernel, 2, 64, 0, nullptr, out.data(), 0);
    for (int t = 0; t < 64; ++t) {
      const int w = t & ~31, lane = t % 32;
      CHECK(out[t] == (w + 31 - lane) + (w + 32 - (lane + 1) % 32));
    }
    const std::string msg = expect_fault(FaultKind::shared_race, {"s[3]", "thread (40,0,0)", "thread (3,0,0)"},
                                         [&] { DF_LAUNCH(syncwarp_kernel, 1, 64, 0, nullptr, out.data(), 1); });
    CHECK(msg.find(line(kCrossWarpLine)) != std::string::npos);
    CHECK(msg.find("nor a __syncwarp") == std::string::npos);  // two warps: only a barrier would do
  });
}

TEST_CASE("a shuffle does not order shared memory", "[emu][simt]") {
  std::vector<int> out(32);
  for_each_order([&] {
    const std::string msg =
        expect_fault(FaultKind::shared_race, {"s[0]", "thread (0,0,0)", "thread (1,0,0)", "nor a __syncwarp of both lanes"},
                     [&] { DF_LAUNCH(shuffle_is_no_fence_kernel, 1, 32, 0, nullptr, out.data()); });
    CHECK(msg.find(line(kShuffleWriteLine)) != std::string::npos);
    CHECK(msg.find(line(kShuffleReadLine)) != std::string::npos);
  });
}

TEST_CASE("atomics do not race with atomics, but do with plain accesses", "[emu][simt]") {
  std::vector<int> out(96);
  for_each_order([&] {
    DF_LAUNCH(atomic_counter_kernel, 2, 96, 0, nullptr, out.data());
    for (int v : out) CHECK(v == 96);
    const std::string msg = expect_fault(FaultKind::shared_race, {"count[0]", "atomically"},
                                         [&] { DF_LAUNCH(atomic_then_read_kernel, 1, 96, 0, nullptr, out.data()); });
    CHECK(msg.find(line(kAtomicLine)) != std::string::npos);
    CHECK(msg.find(line(kPlainReadLine)) != std::string::npos);
  });
}

TEST_CASE("race-free kernels pass the check: neighbouring bf16, broadcasts, barriers, early exits", "[emu][simt]") {
  std::vector<__nv_bfloat16> x(128);
  for (int i = 0; i < 128; ++i) x[i] = __float2bfloat16(static_cast<float>(i));
  std::vector<float> out(128);
  std::vector<int> iout(100);
  for_each_order([&] {
    DF_LAUNCH(bf16_neighbours_kernel, 3, 128, 0, nullptr, x.data(), out.data());
    for (int t = 0; t < 128; ++t) CHECK(out[t] == static_cast<float>(127 - t));
    std::fill(iout.begin(), iout.end(), -1);
    DF_LAUNCH(broadcast_kernel, 1, 100, 0, nullptr, iout.data(), 90);
    // acc = 1, then 1 + 1, then 2 + 3; s = 7 at the end.
    for (int t = 0; t < 100; ++t) CHECK(iout[t] == (t < 90 ? 12 : -1));
  });
}

TEST_CASE("the race check can be turned off", "[emu][simt]") {
  RaceCheckScope off(false);
  std::vector<int> out(64);
  DF_LAUNCH(write_write_kernel, 1, 64, 0, nullptr, out.data());
  CHECK((out[0] == 0 || out[0] == 40));
}

#else  // the build compiled this file without the race check's instrumentation

TEST_CASE("the race check is compiled in where the build says so", "[emu][simt]") {
#if defined(DIFFUSE_SIMT_RACE_CHECK_BUILD)
  FAIL("kernels/simt/race_check.cmake instrumented this file, but DF_SIMT_RACECHECK is 0: the flags did not take");
#else
  WARN("the shared-memory race check is not in this build (a sanitizer build, DIFFUSE_SIMT_RACE_CHECK=OFF, or "
       "cmake/DiffuseTargets.cmake without kernels/simt/race_check.cmake)");
#endif
}

#endif  // DF_SIMT_RACECHECK
