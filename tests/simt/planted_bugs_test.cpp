// Bugs planted on purpose, which the emulator must expose. Races through shared memory are
// shared_race faults naming both threads and both lines (the race check, kernels/simt/race.h,
// where the build compiles this file with its instrumentation), and also show up as results that
// change with the thread order or as NaN from the poison; a correct kernel gives the same bits
// under every order. Out-of-bounds global accesses are AddressSanitizer's to find, in the
// sanitizer build. (Faults for divergent barriers, deadlocks, shuffles outside the mask, oversized
// blocks and shared memory are planted in sync_, warp_, launch_ and shared_test.cpp; the race
// check's own tests are in race_test.cpp.)
#include "tests/simt/simt_test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <memory>
#include <random>
#include <string>

#if defined(__SANITIZE_ADDRESS__)
#define DF_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DF_TEST_ASAN 1
#endif
#endif

using namespace diffuse::simt;
using namespace diffuse::simt::test;

namespace {

constexpr int kBlock = 256;

__global__ void __launch_bounds__(kBlock) sum_kernel(const float* __restrict__ x, float* __restrict__ y, int n) {
  DF_SHARED(float, tile, kBlock);
  const int t = threadIdx.x, i = blockIdx.x * kBlock + t;
  tile[t] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s /= 2) {
    if (t < s) tile[t] += tile[t + s];
    __syncthreads();
  }
  if (t == 0) y[blockIdx.x] = tile[0];
}

// The same reduction without the barrier between the load and the tree.
__global__ void __launch_bounds__(kBlock) sum_missing_first_sync_kernel(const float* x, float* y, int n) {
  DF_SHARED(float, tile, kBlock);
  const int t = threadIdx.x, i = blockIdx.x * kBlock + t;
  tile[t] = i < n ? x[i] : 0.0f;
  for (int s = kBlock / 2; s > 0; s /= 2) {
    if (t < s) tile[t] += tile[t + s];
    __syncthreads();
  }
  if (t == 0) y[blockIdx.x] = tile[0];
}

// ... and without the barrier inside the tree.
__global__ void __launch_bounds__(kBlock) sum_missing_loop_sync_kernel(const float* x, float* y, int n) {
  DF_SHARED(float, tile, kBlock);
  const int t = threadIdx.x, i = blockIdx.x * kBlock + t;
  tile[t] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s /= 2) {
    if (t < s) tile[t] += tile[t + s];
  }
  if (t == 0) y[blockIdx.x] = tile[0];
}

// Every thread adds its input into one shared total with a plain read-modify-write. A thread never
// yields between its read and its write, so every thread order gives the right sum: only the
// race check sees it.
[[maybe_unused]] constexpr int kRmwLine = __LINE__ + 6;
__global__ void __launch_bounds__(kBlock) sum_rmw_race_kernel(const float* x, float* y, int n) {
  DF_SHARED(float, total, 1);
  const int t = threadIdx.x, i = blockIdx.x * kBlock + t;
  if (t == 0) total[0] = 0.0f;
  __syncthreads();
  total[0] += i < n ? x[i] : 0.0f;
  __syncthreads();
  if (t == 0) y[blockIdx.x] = total[0];
}

// A 3-point stencil that loads a halo only on the left: the right neighbour of the block's last
// thread is never written.
__global__ void stencil_missing_halo_kernel(const float* x, float* y, int n) {
  DF_SHARED(float, tile, 66);
  const int t = threadIdx.x, i = blockIdx.x * 64 + t;
  tile[t + 1] = x[i];
  if (t == 0) tile[0] = blockIdx.x > 0 ? x[i - 1] : 0.0f;
  __syncthreads();
  y[i] = tile[t] + tile[t + 1] + tile[t + 2];
}

std::vector<float> random_input(int n) {
  std::mt19937 g(12345);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(n);
  for (float& v : x) v = u(g);
  return x;
}

// The tree's own association, in double: what a correct kernel must match to float rounding.
std::vector<double> reference_sums(const std::vector<float>& x, int blocks) {
  std::vector<double> r(blocks, 0.0);
  for (size_t i = 0; i < x.size(); ++i) r[i / kBlock] += x[i];
  return r;
}

using Kernel = void (*)(const float*, float*, int);

// The block sums of `k` under each order.
std::vector<std::vector<float>> run_each_order(Kernel k, const std::vector<float>& x, int blocks) {
  std::vector<std::vector<float>> results;
  for (const OrderSpec& o : test_orders()) {
    OrderScope s(o);
    std::vector<float> y(blocks);
    DF_LAUNCH(k, blocks, kBlock, 0, nullptr, x.data(), y.data(), static_cast<int>(x.size()));
    results.push_back(y);
  }
  return results;
}

bool matches(const std::vector<float>& y, const std::vector<double>& ref) {
  for (size_t b = 0; b < y.size(); ++b)
    if (!(std::fabs(y[b] - ref[b]) <= 1e-4 * (1.0 + std::fabs(ref[b])))) return false;  // NaN fails
  return true;
}

}  // namespace

TEST_CASE("a correct reduction gives the same bits under every thread order", "[emu][simt]") {
  const int blocks = 5, n = blocks * kBlock - 17;
  const std::vector<float> x = random_input(n);
  const auto ref = reference_sums(x, blocks);
  const auto results = run_each_order(sum_kernel, x, blocks);
  for (const auto& y : results) {
    CHECK(matches(y, ref));
    for (size_t b = 0; b < y.size(); ++b) CHECK(bits(y[b]) == bits(results[0][b]));
  }
}

TEST_CASE("planted bug: a missing __syncthreads gives a wrong result under some order", "[emu][simt]") {
  RaceCheckScope off(false);  // the line of defence of a build without the race check
  const int blocks = 3, n = blocks * kBlock;
  const std::vector<float> x = random_input(n);
  const auto ref = reference_sums(x, blocks);
  for (Kernel k : {sum_missing_first_sync_kernel, sum_missing_loop_sync_kernel}) {
    const auto results = run_each_order(k, x, blocks);
    int wrong = 0;
    for (const auto& y : results) wrong += !matches(y, ref);
    CHECK(wrong >= 1);
    // Without the first barrier, thread 0 runs first under the forward order and reads slots
    // nobody has written yet: the poison makes the sum NaN.
    if (k == sum_missing_first_sync_kernel) CHECK(std::isnan(results[0][0]));
  }
}

TEST_CASE("planted bug: reading shared memory that no thread wrote gives NaN", "[emu][simt]") {
  const int blocks = 2, n = blocks * 64;
  const std::vector<float> x = random_input(n);
  for_each_order([&] {
    std::vector<float> y(n, 0.0f);
    DF_LAUNCH(stencil_missing_halo_kernel, blocks, 64, 0, nullptr, x.data(), y.data(), n);
    for (int b = 0; b < blocks; ++b) {
      CHECK(std::isnan(y[b * 64 + 63]));   // read tile[65], never written
      CHECK(!std::isnan(y[b * 64 + 10]));  // the interior is fine
    }
  });
}

#if defined(DF_TEST_ASAN)
namespace {

// y[i] = 2 x[i] for i <= n: the guard is off by one, so the thread of index n writes one element
// past the end of y. The emulator does not know where a global buffer ends; AddressSanitizer does.
__global__ void scale_overrun_kernel(const float* __restrict__ x, float* __restrict__ y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) y[i] = 2.0f * (i < n ? x[i] : 0.0f);
}

struct ChildResult {
  int status = 0;      // as waitpid reports it
  std::string output;  // the child's stderr and stdout
};

// Runs fn in a child process (a death test: AddressSanitizer ends the process it reports in) and
// collects what it printed. The child exits 0 if fn returns.
template <class F>
ChildResult run_in_child(F&& fn) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    fn();
    ::_exit(0);
  }
  ::close(fds[1]);
  ChildResult r;
  char buf[4096];
  for (ssize_t got; (got = ::read(fds[0], buf, sizeof buf)) != 0;) {
    if (got < 0) continue;  // EINTR
    r.output.append(buf, static_cast<size_t>(got));
  }
  ::close(fds[0]);
  ::waitpid(pid, &r.status, 0);
  return r;
}

}  // namespace

// Built only under AddressSanitizer (scripts/sanitize.sh runs the emu tier there): ASan must end
// the launch at the write one past the end of y, under every thread order. A child that finishes
// the launch exits 0, and the test fails.
TEST_CASE("planted bug: a write one element past a global buffer is caught by AddressSanitizer", "[emu][simt]") {
  const int n = 100;
  const std::vector<float> x = random_input(n);
  for_each_order([&] {
    const ChildResult r = run_in_child([&] {
      std::unique_ptr<float[]> y(new float[n]);  // exactly n floats: ASan's redzone follows
      DF_LAUNCH(scale_overrun_kernel, 2, 64, 0, nullptr, x.data(), y.get(), n);
    });
    INFO(r.output);
    CHECK(!(WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0));
    CHECK(r.output.find("AddressSanitizer: heap-buffer-overflow") != std::string::npos);
    CHECK(r.output.find("WRITE of size 4") != std::string::npos);
    // 0 bytes past the end of the 400-byte block (clang 14 says "to the right of", later ones "after").
    CHECK(r.output.find("0 bytes ") != std::string::npos);
    CHECK(r.output.find("400-byte region") != std::string::npos);
  });
}
#endif  // DF_TEST_ASAN

TEST_CASE("planted bug: a read-modify-write race on one shared address is a fault under every order", "[emu][simt]") {
  const int blocks = 2, n = blocks * kBlock - 5;
  const std::vector<float> x = random_input(n);
  {
    // Thread orders cannot see it: every order sums right.
    RaceCheckScope off(false);
    for (const auto& y : run_each_order(sum_rmw_race_kernel, x, blocks)) CHECK(matches(y, reference_sums(x, blocks)));
  }
#if DF_SIMT_RACECHECK
  for_each_order([&] {
    std::vector<float> y(blocks);
    const std::string msg = expect_fault(
        FaultKind::shared_race,
        {"shared memory race on total[0] (DF_SHARED at tests/simt/planted_bugs_test.cpp:", "sum_rmw_race_kernel",
         "block (0,0,0), thread (", "block (0,0,0) thread ("},
        [&] { DF_LAUNCH(sum_rmw_race_kernel, blocks, kBlock, 0, nullptr, x.data(), y.data(), n); });
    // Both accesses are the += of two different threads.
    const std::string at = "planted_bugs_test.cpp:" + std::to_string(kRmwLine);
    const std::size_t first = msg.find(at);
    CHECK(first != std::string::npos);
    CHECK(msg.find(at, first + 1) != std::string::npos);
  });
#elif defined(DIFFUSE_SIMT_RACE_CHECK_BUILD)
  FAIL("kernels/simt/race_check.cmake instrumented this file, but DF_SIMT_RACECHECK is 0: the flags did not take");
#else
  WARN("built without the shared-memory race check (a sanitizer build, DIFFUSE_SIMT_RACE_CHECK=OFF, or "
       "kernels/simt/race_check.cmake not in the build): the race goes unseen");
#endif
}

#if DF_SIMT_RACECHECK
TEST_CASE("planted bug: each missing __syncthreads of the reduction is a race fault under every order", "[emu][simt]") {
  const int blocks = 3, n = blocks * kBlock;
  const std::vector<float> x = random_input(n);
  for (Kernel k : {sum_missing_first_sync_kernel, sum_missing_loop_sync_kernel}) {
    for_each_order([&] {
      std::vector<float> y(blocks);
      expect_fault(FaultKind::shared_race, {"shared memory race on tile[", "planted_bugs_test.cpp:", "thread ("},
                   [&] { DF_LAUNCH(k, blocks, kBlock, 0, nullptr, x.data(), y.data(), n); });
    });
  }
}
#endif  // DF_SIMT_RACECHECK
