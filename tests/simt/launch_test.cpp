// Launches under the emulator: 3-D grid and block indices, configuration limits, per-thread
// parameter copies, thread orders, and recovery after a fault.
#include "tests/simt/simt_test_util.h"

#include <cstdlib>

using namespace diffuse::simt;
using namespace diffuse::simt::test;

namespace {

__global__ void indices_kernel(uint3* tid, uint3* bid, dim3* bdim, dim3* gdim, int* warp_size) {
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned i = b * blockDim.x * blockDim.y * blockDim.z + t;
  tid[i] = threadIdx;
  bid[i] = blockIdx;
  bdim[i] = blockDim;
  gdim[i] = gridDim;
  *warp_size = warpSize;
}

// Parameters are each thread's own copies, as on the GPU.
__global__ void param_copy_kernel(int* out, int k) {
  k += static_cast<int>(threadIdx.x);
  out[threadIdx.x] = k;
}

// Records the order in which threads first ran: differs between orders, which is the point.
__global__ void first_run_kernel(int* counter, int* order) { order[threadIdx.x] = atomicAdd(counter, 1); }

__global__ void noop_kernel() {}

__global__ void throwing_kernel(int* out) {
  if (threadIdx.x == 5) __trap();
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void nested_launch_kernel() {
  if (threadIdx.x == 0) DF_LAUNCH(noop_kernel, 1, 1, 0, nullptr);
}

__global__ void fault_midway_kernel(float* out) {
  DF_SHARED(float, s, 64);
  s[threadIdx.x] = 1.0f;
  __syncthreads();
  if (blockIdx.x == 2 && threadIdx.x < 8) __syncthreads();  // a divergent barrier in block 2 only
  __syncthreads();
  out[blockIdx.x * 64 + threadIdx.x] = s[63 - threadIdx.x];
}

__global__ void deep_stack_kernel(float* out) {
  volatile float big[4096];  // 16 KiB of stack per thread
  for (int i = 0; i < 4096; ++i) big[i] = static_cast<float>(i);
  out[threadIdx.x] = big[4095 - threadIdx.x];
}

}  // namespace

TEST_CASE("3-D grid and block indices", "[emu][simt]") {
  const dim3 grid(3, 2, 2), block(4, 3, 2);
  const int n = 12 * 24;
  std::vector<uint3> tid(n), bid(n);
  std::vector<dim3> bdim(n), gdim(n);
  int ws = 0;
  for_each_order([&] {
    DF_LAUNCH(indices_kernel, grid, block, 0, nullptr, tid.data(), bid.data(), bdim.data(), gdim.data(), &ws);
    CHECK(ws == 32);
    int i = 0;
    for (unsigned bz = 0; bz < 2; ++bz)
      for (unsigned by = 0; by < 2; ++by)
        for (unsigned bx = 0; bx < 3; ++bx)
          for (unsigned tz = 0; tz < 2; ++tz)
            for (unsigned ty = 0; ty < 3; ++ty)
              for (unsigned tx = 0; tx < 4; ++tx, ++i) {
                REQUIRE((tid[i].x == tx && tid[i].y == ty && tid[i].z == tz));
                REQUIRE((bid[i].x == bx && bid[i].y == by && bid[i].z == bz));
                REQUIRE((bdim[i].x == 4 && bdim[i].y == 3 && bdim[i].z == 2));
                REQUIRE((gdim[i].x == 3 && gdim[i].y == 2 && gdim[i].z == 2));
              }
  });
}

TEST_CASE("kernel parameters convert like a launch and are per-thread copies", "[emu][simt]") {
  std::vector<int> out(8);
  const short k = 100;  // converts to the kernel's int
  DF_LAUNCH(param_copy_kernel, 1, 8, 0, nullptr, out.data(), k);
  for (int t = 0; t < 8; ++t) CHECK(out[t] == 100 + t);
}

TEST_CASE("thread orders: forward, reverse and random run threads in different orders", "[emu][simt]") {
  const int n = 64;
  std::vector<int> fwd(n), rev(n), rnd(n), rnd2(n), rnd_other(n);
  int c = 0;
  {
    OrderScope s(Order::forward);
    DF_LAUNCH(first_run_kernel, 1, n, 0, nullptr, &c, fwd.data());
  }
  c = 0;
  {
    OrderScope s(Order::reverse);
    DF_LAUNCH(first_run_kernel, 1, n, 0, nullptr, &c, rev.data());
  }
  c = 0;
  {
    OrderScope s(Order::random, 7);
    DF_LAUNCH(first_run_kernel, 1, n, 0, nullptr, &c, rnd.data());
    c = 0;
    DF_LAUNCH(first_run_kernel, 1, n, 0, nullptr, &c, rnd2.data());
  }
  c = 0;
  {
    OrderScope s(Order::random, 8);
    DF_LAUNCH(first_run_kernel, 1, n, 0, nullptr, &c, rnd_other.data());
  }
  for (int t = 0; t < n; ++t) {
    CHECK(fwd[t] == t);
    CHECK(rev[t] == n - 1 - t);
  }
  CHECK(rnd == rnd2);        // a seed repeats
  CHECK(rnd != fwd);
  CHECK(rnd != rev);
  CHECK(rnd != rnd_other);   // another seed does not
  std::vector<int> sorted(rnd);
  std::sort(sorted.begin(), sorted.end());
  CHECK(sorted == fwd);      // a permutation
}

TEST_CASE("thread order: parsing, printing and the scope", "[emu][simt]") {
  CHECK(parse_order("forward") == OrderSpec{Order::forward, 0});
  CHECK(parse_order("reverse") == OrderSpec{Order::reverse, 0});
  CHECK(parse_order("random:42") == OrderSpec{Order::random, 42});
  CHECK(parse_order("random").order == Order::random);
  CHECK(to_string(OrderSpec{Order::random, 42}) == "random:42");
  CHECK_THROWS_AS(parse_order("sideways"), diffuse::Error);
  CHECK_THROWS_AS(parse_order("random:x"), diffuse::Error);
  const OrderSpec before = order();
  {
    OrderScope s(Order::reverse);
    CHECK(order() == OrderSpec{Order::reverse, 0});
  }
  CHECK(order() == before);
  CHECK(test_orders().size() == 3);
}

TEST_CASE("planted bug: a block of 1025 threads is a fault naming the launch", "[emu][simt]") {
  expect_fault(FaultKind::launch_config, {"1025 threads", "noop_kernel", "launch_test.cpp:"},
               [] { DF_LAUNCH(noop_kernel, 1, 1025, 0, nullptr); });
  expect_fault(FaultKind::launch_config, {"1025 threads"}, [] { DF_LAUNCH(noop_kernel, 1, dim3(41, 25), 0, nullptr); });
  expect_fault(FaultKind::launch_config, {"(1024, 1024, 64)"}, [] { DF_LAUNCH(noop_kernel, 1, dim3(1, 1, 65), 0, nullptr); });
  expect_fault(FaultKind::launch_config, {"extent is 0"}, [] { DF_LAUNCH(noop_kernel, 0, 32, 0, nullptr); });
  expect_fault(FaultKind::launch_config, {"65535"}, [] { DF_LAUNCH(noop_kernel, dim3(1, 65536), 32, 0, nullptr); });
  DF_LAUNCH(noop_kernel, 1, 1024, 0, nullptr);  // the limit itself is fine
}

TEST_CASE("a kernel's exception (__trap) is a fault naming the thread", "[emu][simt]") {
  std::vector<int> out(32);
  for_each_order([&] {
    expect_fault(FaultKind::kernel_exception, {"__trap()", "thread (5,0,0)", "throwing_kernel"},
                 [&] { DF_LAUNCH(throwing_kernel, 1, 32, 0, nullptr, out.data()); });
  });
}

TEST_CASE("DF_LAUNCH inside a kernel is refused", "[emu][simt]") {
  expect_fault(FaultKind::kernel_exception, {"dynamic parallelism"}, [] { DF_LAUNCH(nested_launch_kernel, 1, 2, 0, nullptr); });
}

TEST_CASE("threadIdx outside a kernel is an error, not a crash", "[emu][simt]") {
  CHECK_THROWS_WITH(static_cast<void>(threadIdx.x), Catch::Contains("outside a kernel"));
  CHECK_THROWS_AS(__syncthreads(), diffuse::Error);
}

TEST_CASE("after a fault the emulator is usable again", "[emu][simt]") {
  const int blocks = 4;
  std::vector<float> out(blocks * 64, -1.0f);
  for (int round = 0; round < 3; ++round) {
    for_each_order([&] {
      expect_fault(FaultKind::divergent_barrier, {"block (2,0,0)"},
                   [&] { DF_LAUNCH(fault_midway_kernel, blocks, 64, 0, nullptr, out.data()); });
      // The same kernel with a grid that avoids block 2 runs to the end.
      DF_LAUNCH(fault_midway_kernel, 2, 64, 0, nullptr, out.data());
      for (int i = 0; i < 2 * 64; ++i) REQUIRE(out[i] == 1.0f);
    });
  }
  const Stats s = stats();
  CHECK(s.launches > 0);
  CHECK(s.switches > 0);
}

TEST_CASE("a thread has 64 KiB of stack by default", "[emu][simt]") {
  CHECK(stack_size() >= 16 * 1024);
  if (!std::getenv("DIFFUSE_SIMT_STACK")) CHECK(stack_size() == 64 * 1024);
  std::vector<float> out(64);
  DF_LAUNCH(deep_stack_kernel, 2, 64, 0, nullptr, out.data());
  for (int t = 0; t < 64; ++t) CHECK(out[t] == static_cast<float>(4095 - t));
}
