// Block barriers and __syncwarp: a barrier waits for every thread that has not exited; waiting
// at two different __syncthreads calls, or waiting forever, is a fault.
#include "tests/simt/simt_test_util.h"

using namespace diffuse::simt;
using namespace diffuse::simt::test;

namespace {

// Two phases through shared memory; a thread reads what another wrote before the barrier.
__global__ void reverse_kernel(const int* in, int* out, int n) {
  DF_SHARED(int, s, 256);
  const int t = threadIdx.x;
  s[t] = in[t];
  __syncthreads();
  out[t] = s[n - 1 - t];
}

__global__ void barrier_votes_kernel(const int* pred, int* count, int* all, int* any) {
  const int t = threadIdx.x;
  count[t] = __syncthreads_count(pred[t]);
  all[t] = __syncthreads_and(pred[t]);
  any[t] = __syncthreads_or(pred[t]);
}

// Threads past n return early; the rest still pass the barrier (exited threads count as arrived).
__global__ void early_exit_kernel(int* out, int n) {
  DF_SHARED(int, s, 128);
  const int t = threadIdx.x;
  if (t >= n) return;
  s[t] = t * 3;
  __syncthreads();
  out[t] = s[n - 1 - t] + __syncthreads_count(1);
}

// A barrier inside a loop whose trip count is the same for all threads.
__global__ void loop_barrier_kernel(float* out) {
  DF_SHARED(float, s, 64);
  const int t = threadIdx.x;
  s[t] = static_cast<float>(t);
  __syncthreads();
  for (int it = 0; it < 5; ++it) {
    const float v = s[(t + 1) % 64];
    __syncthreads();
    s[t] = v;
    __syncthreads();
  }
  out[t] = s[t];
}

__global__ void syncwarp_kernel(int* out, int* out_half) {
  DF_SHARED(int, s, 64);
  const unsigned t = threadIdx.x, lane = t % 32;
  // Each warp only exchanges within itself, so __syncwarp is enough.
  s[t] = static_cast<int>(t) * 10;
  __syncwarp();
  out[t] = s[(t & ~31u) + (31 - lane)];
  __syncwarp();
  // A sub-warp rendezvous: each half-warp exchanges within itself, and only its lanes take part.
  const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  s[t] = static_cast<int>(t) + 1000;
  __syncwarp(half);
  out_half[t] = s[(t & ~15u) + (15 - lane % 16)];
}

__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void deadlock_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x < 16)
    v += __shfl_xor_sync(0xffffffffu, v, 1);  // waits for lanes 16..31 ...
  else
    __syncthreads();  // ... which wait for lanes 0..15
  out[threadIdx.x] = v;
}

__global__ void syncwarp_deadlock_kernel(int* out) {
  if (threadIdx.x % 32 == 0) __syncwarp(0x3u);  // lane 1 never comes
  else if (threadIdx.x % 32 == 1) __syncthreads();
  out[threadIdx.x] = 1;
}

}  // namespace

TEST_CASE("__syncthreads orders shared-memory writes before reads", "[emu][simt]") {
  const int n = 256;
  std::vector<int> in(n), out(n);
  for (int i = 0; i < n; ++i) in[i] = i * i - 100;
  for_each_order([&] {
    DF_LAUNCH(reverse_kernel, 1, n, 0, nullptr, in.data(), out.data(), n);
    for (int i = 0; i < n; ++i) REQUIRE(out[i] == in[n - 1 - i]);
  });
}

TEST_CASE("__syncthreads_count, _and and _or", "[emu][simt]") {
  const int n = 96;
  for (int pattern = 0; pattern < 3; ++pattern) {
    std::vector<int> pred(n), count(n), all(n), any(n);
    for (int i = 0; i < n; ++i) pred[i] = pattern == 0 ? (i % 3 == 0) * (i + 1) : pattern == 1 ? 1 : 0;
    const int expect = pattern == 0 ? 32 : pattern == 1 ? n : 0;
    for_each_order([&] {
      DF_LAUNCH(barrier_votes_kernel, 1, n, 0, nullptr, pred.data(), count.data(), all.data(), any.data());
      for (int i = 0; i < n; ++i) {
        REQUIRE(count[i] == expect);
        REQUIRE(all[i] == (expect == n));
        REQUIRE(any[i] == (expect != 0));
      }
    });
  }
}

TEST_CASE("threads that have exited count as arrived at a barrier", "[emu][simt]") {
  const int n = 100;
  std::vector<int> out(128, -7);
  for_each_order([&] {
    DF_LAUNCH(early_exit_kernel, 1, 128, 0, nullptr, out.data(), n);
    for (int t = 0; t < n; ++t) REQUIRE(out[t] == (n - 1 - t) * 3 + n);
    for (int t = n; t < 128; ++t) REQUIRE(out[t] == -7);
  });
}

TEST_CASE("a barrier in a loop", "[emu][simt]") {
  std::vector<float> out(64);
  for_each_order([&] {
    DF_LAUNCH(loop_barrier_kernel, 1, 64, 0, nullptr, out.data());
    for (int t = 0; t < 64; ++t) REQUIRE(out[t] == static_cast<float>((t + 5) % 64));
  });
}

TEST_CASE("__syncwarp with a full and a partial mask", "[emu][simt]") {
  std::vector<int> out(64), out_half(64);
  for_each_order([&] {
    DF_LAUNCH(syncwarp_kernel, 1, 64, 0, nullptr, out.data(), out_half.data());
    for (int t = 0; t < 64; ++t) {
      REQUIRE(out[t] == ((t & ~31) + 31 - t % 32) * 10);
      REQUIRE(out_half[t] == (t & ~15) + 15 - t % 16 + 1000);
    }
  });
}

TEST_CASE("planted bug: threads at different __syncthreads calls are a divergent barrier", "[emu][simt]") {
  std::vector<int> out(32);
  for_each_order([&] {
    expect_fault(FaultKind::divergent_barrier, {"divergent barrier", "sync_test.cpp:", "divergent_barrier_kernel", "block (0,0,0)"},
                 [&] { DF_LAUNCH(divergent_barrier_kernel, 1, 32, 0, nullptr, out.data()); });
  });
}

TEST_CASE("planted bug: a deadlock is a fault, not a hang", "[emu][simt]") {
  std::vector<float> out(32);
  for_each_order([&] {
    expect_fault(FaultKind::deadlock, {"deadlock", "__shfl_xor_sync", "__syncthreads", "sync_test.cpp:"},
                 [&] { DF_LAUNCH(deadlock_kernel, 1, 32, 0, nullptr, out.data()); });
  });
  std::vector<int> iout(64);
  expect_fault(FaultKind::deadlock, {"deadlock", "__syncwarp", "lane 1"},
               [&] { DF_LAUNCH(syncwarp_deadlock_kernel, 1, 64, 0, nullptr, iout.data()); });
}
