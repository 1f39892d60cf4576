// Shared memory under the emulator: per block, one address per declaration for all threads,
// 16-byte aligned, poisoned with 0xFF at every block's start, and bounded by sm_90's limit.
#include "tests/simt/simt_test_util.h"

using namespace diffuse::simt;
using namespace diffuse::simt::test;

namespace {

// Each thread writes its slot; after the barrier each reads its neighbour's: only works if all
// threads of a block see one array.
__global__ void rotate_kernel(const int* in, int* out) {
  DF_SHARED(int, tile, 64);
  const unsigned t = threadIdx.x;
  tile[t] = in[blockIdx.x * 64 + t];
  __syncthreads();
  out[blockIdx.x * 64 + t] = tile[(t + 1) % 64];
}

__global__ void addresses_kernel(uintptr_t* out) {
  DF_SHARED(char, a, 3);
  DF_SHARED(double, b, 5);
  DF_SHARED2(float, c, 4, 9);
  char* dyn = DF_DYNAMIC_SHARED(char);
  const unsigned base = (blockIdx.x * blockDim.x + threadIdx.x) * 5;
  out[base + 0] = reinterpret_cast<uintptr_t>(&a[0]);
  out[base + 1] = reinterpret_cast<uintptr_t>(&b[0]);
  out[base + 2] = reinterpret_cast<uintptr_t>(&c[0][0]);
  out[base + 3] = reinterpret_cast<uintptr_t>(dyn);
  out[base + 4] = sizeof(c) == 4 * 9 * sizeof(float) && sizeof(b) == 5 * sizeof(double);
}

// Reads every byte of static and dynamic shared memory before anyone writes it, then writes it,
// so the next block would see the writes if poisoning did not happen per block.
__global__ void poison_kernel(unsigned* bad, int dyn_bytes) {
  DF_SHARED(unsigned char, s, 100);
  unsigned char* d = DF_DYNAMIC_SHARED(unsigned char);
  if (threadIdx.x == 0) {
    for (int i = 0; i < 100; ++i) bad[blockIdx.x] += s[i] != 0xFF;
    for (int i = 0; i < dyn_bytes; ++i) bad[blockIdx.x] += d[i] != 0xFF;
    for (int i = 0; i < 100; ++i) s[i] = 0;
    for (int i = 0; i < dyn_bytes; ++i) d[i] = 0;
  }
}

__global__ void poison_nan_kernel(float* f, float* b, float* h) {
  DF_SHARED(float, sf, 1);
  DF_SHARED(__nv_bfloat16, sb, 1);
  DF_SHARED(__half, sh, 1);
  *f = sf[0];
  *b = __bfloat162float(sb[0]);
  *h = __half2float(sh[0]);
}

__global__ void dynamic_scan_kernel(const float* in, float* out, int n) {
  float* buf = DF_DYNAMIC_SHARED(float);
  const int t = threadIdx.x;
  buf[t] = in[t];
  __syncthreads();
  // Hillis-Steele inclusive scan, double-buffered in dynamic shared memory.
  int src = 0;
  for (int off = 1; off < n; off *= 2) {
    const int dst = 1 - src;
    buf[dst * n + t] = buf[src * n + t] + (t >= off ? buf[src * n + t - off] : 0.0f);
    __syncthreads();
    src = dst;
  }
  out[t] = buf[src * n + t];
}

__global__ void big_static_kernel(float* out) {
  DF_SHARED(float, a, 40000);  // 160,000 bytes: under the limit alone
  a[threadIdx.x] = 1.0f;
  if (threadIdx.x == 0) out[0] = a[0];  // its own slot: every thread reading a[0] would race with thread 0
}

__global__ void too_big_static_kernel(float* out) {
  DF_SHARED(float, a, 40000);
  DF_SHARED(float, b, 20000);  // 240,000 bytes together
  a[0] = b[0] = 1.0f;
  out[0] = a[0];
}

}  // namespace

TEST_CASE("shared memory is one array per block, seen by all its threads", "[emu][simt]") {
  std::vector<int> in(3 * 64), out(3 * 64, -1);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<int>(i * 7 + 1);
  for_each_order([&] {
    DF_LAUNCH(rotate_kernel, dim3(3), dim3(64), 0, nullptr, in.data(), out.data());
    for (int b = 0; b < 3; ++b)
      for (int t = 0; t < 64; ++t) REQUIRE(out[b * 64 + t] == in[b * 64 + (t + 1) % 64]);
  });
}

TEST_CASE("static and dynamic shared memory are 16-byte aligned, at one address for all threads and blocks",
          "[emu][simt]") {
  const int blocks = 2, threads = 40;
  std::vector<uintptr_t> out(blocks * threads * 5);
  DF_LAUNCH(addresses_kernel, dim3(blocks), dim3(threads), 24, nullptr, out.data());
  for (int i = 0; i < blocks * threads; ++i) {
    for (int k = 0; k < 4; ++k) {
      CHECK(out[i * 5 + k] % 16 == 0);
      CHECK(out[i * 5 + k] == out[k]);
    }
    CHECK(out[i * 5 + 4] == 1);
  }
  // The arrays do not overlap each other or the 24 dynamic bytes.
  std::vector<std::pair<uintptr_t, size_t>> spans = {{out[0], 3}, {out[1], 40}, {out[2], 144}, {out[3], 24}};
  std::sort(spans.begin(), spans.end());
  for (size_t k = 1; k < spans.size(); ++k) CHECK(spans[k - 1].first + spans[k - 1].second <= spans[k].first);
}

TEST_CASE("shared memory is poisoned with 0xFF at the start of every block", "[emu][simt]") {
  std::vector<unsigned> bad(4, 0);
  DF_LAUNCH(poison_kernel, dim3(4), dim3(32), 50, nullptr, bad.data(), 50);
  for (unsigned b : bad) CHECK(b == 0);
  // And at the next launch, after this one zeroed it.
  std::fill(bad.begin(), bad.end(), 0u);
  DF_LAUNCH(poison_kernel, dim3(2), dim3(32), 200, nullptr, bad.data(), 200);
  CHECK(bad[0] == 0);
  CHECK(bad[1] == 0);
}

TEST_CASE("poisoned shared memory reads as NaN in float, bf16 and half", "[emu][simt]") {
  float f = 0, b = 0, h = 0;
  DF_LAUNCH(poison_nan_kernel, 1, 1, 0, nullptr, &f, &b, &h);
  CHECK(std::isnan(f));
  CHECK(std::isnan(b));
  CHECK(std::isnan(h));
}

TEST_CASE("dynamic shared memory holds what the launch asked for", "[emu][simt]") {
  const int n = 64;
  std::vector<float> in(n), out(n), ref(n);
  for (int i = 0; i < n; ++i) in[i] = static_cast<float>((i * 37) % 11) - 5.0f;
  float acc = 0;
  for (int i = 0; i < n; ++i) ref[i] = acc += in[i];
  for_each_order([&] {
    DF_LAUNCH(dynamic_scan_kernel, 1, n, 2 * n * sizeof(float), nullptr, in.data(), out.data(), n);
    for (int i = 0; i < n; ++i) REQUIRE(out[i] == ref[i]);
  });
}

TEST_CASE("shared memory up to the limit works; over it is a fault naming the declaration", "[emu][simt]") {
  float out = 0;
  DF_LAUNCH(big_static_kernel, 1, 32, 60000, nullptr, &out);  // 220,000 bytes in all
  CHECK(out == 1.0f);
  expect_fault(FaultKind::shared_memory, {"DF_SHARED b", "shared_test.cpp:", "232448", "too_big_static_kernel"},
               [&] { DF_LAUNCH(too_big_static_kernel, 1, 32, 0, nullptr, &out); });
  expect_fault(FaultKind::shared_memory, {"DF_SHARED a", "big_static_kernel"},
               [&] { DF_LAUNCH(big_static_kernel, 1, 32, 100000, nullptr, &out); });
  expect_fault(FaultKind::launch_config, {"232449 bytes of dynamic shared memory", "shared_test.cpp:"},
               [&] { DF_LAUNCH(big_static_kernel, 1, 32, kMaxSharedBytes + 1, nullptr, &out); });
}
