// Atomics under the emulator: every CUDA overload returns the old value and composes under any
// thread order (the result of a race-free use does not depend on the order).
#include "tests/simt/simt_test_util.h"

using namespace diffuse::simt::test;

namespace {

__global__ void int_atomics_kernel(int* sum, unsigned* usum, unsigned long long* llsum, int* mx, int* mn, unsigned* umx,
                                   int* exch_seen, int* cas_slot, int* old_seen, unsigned* bits, unsigned* inc) {
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  old_seen[t] = atomicAdd(sum, t + 1);
  atomicAdd(usum, static_cast<unsigned>(t));
  atomicAdd(llsum, 1ull << 33);
  atomicMax(mx, (t * 37) % 101);
  atomicMin(mn, 50 - (t * 37) % 101);
  atomicMax(umx, static_cast<unsigned>(t));
  exch_seen[t] = atomicExch(cas_slot + 1, t);
  // Claim a ticket with CAS: each thread gets a distinct one.
  int cur = *cas_slot, prev;
  while ((prev = atomicCAS(cas_slot, cur, cur + 1)) != cur) cur = prev;
  atomicOr(bits, 1u << (t % 32));
  atomicAnd(bits + 1, ~(1u << (t % 32)));
  atomicXor(bits + 2, 1u << (t % 4));
  atomicSub(bits + 3, 1u);
  atomicInc(inc, 9u);
}

__global__ void float_atomics_kernel(float* f, double* d, __half* h, __nv_bfloat16* b, __half2* h2,
                                     __nv_bfloat162* b2, float* exch) {
  atomicAdd(f, 0.5f);
  atomicAdd(d, 0.25);
  atomicAdd(h, __float2half(1.0f));
  atomicAdd(b, __float2bfloat16(1.0f));
  atomicAdd(h2, __floats2half2_rn(1.0f, 2.0f));
  atomicAdd(b2, __floats2bfloat162_rn(1.0f, -1.0f));
  atomicExch(exch, 7.0f);
}

}  // namespace

TEST_CASE("integer atomics: add, max, min, exch, CAS, and/or/xor, sub, inc", "[emu][simt]") {
  const int blocks = 3, threads = 64, n = blocks * threads;
  for_each_order([&] {
    int sum = 0, mx = -1000, mn = 1000, cas[2] = {0, -1};
    unsigned usum = 0, umx = 0, bits[4] = {0u, 0xffffffffu, 0u, 1000u}, inc = 0;
    unsigned long long llsum = 0;
    std::vector<int> exch_seen(n), old_seen(n);
    DF_LAUNCH(int_atomics_kernel, blocks, threads, 0, nullptr, &sum, &usum, &llsum, &mx, &mn, &umx, exch_seen.data(), cas,
              old_seen.data(), bits, &inc);
    CHECK(sum == n * (n + 1) / 2);
    CHECK(usum == static_cast<unsigned>(n * (n - 1) / 2));
    CHECK(llsum == static_cast<unsigned long long>(n) << 33);
    CHECK(mx == 100);
    CHECK(mn == -50);
    CHECK(umx == static_cast<unsigned>(n - 1));
    CHECK(cas[0] == n);
    // The exchanges form one chain: every value but the last is seen exactly once.
    std::vector<int> seen(exch_seen);
    std::sort(seen.begin(), seen.end());
    CHECK(seen[0] == -1);
    CHECK(std::adjacent_find(seen.begin(), seen.end()) == seen.end());
    // atomicAdd's old values are the partial sums of some order: all distinct.
    std::sort(old_seen.begin(), old_seen.end());
    CHECK(std::adjacent_find(old_seen.begin(), old_seen.end()) == old_seen.end());
    CHECK(bits[0] == 0xffffffffu);
    CHECK(bits[1] == 0u);
    CHECK(bits[2] == 0u);  // each of 4 bits flipped n/4 = 48 times
    CHECK(bits[3] == 1000u - n);
    CHECK(inc == static_cast<unsigned>(n % 10));  // wraps to 0 after 9
  });
}

TEST_CASE("float, double, half and bf16 atomicAdd; float atomicExch", "[emu][simt]") {
  const int n = 128;
  float f = 0, exch = 0;
  double d = 0;
  __half h = __float2half(0.0f);
  __nv_bfloat16 b = __float2bfloat16(0.0f);
  __half2 h2 = __floats2half2_rn(0.0f, 0.0f);
  __nv_bfloat162 b2 = __floats2bfloat162_rn(0.0f, 0.0f);
  DF_LAUNCH(float_atomics_kernel, 2, n / 2, 0, nullptr, &f, &d, &h, &b, &h2, &b2, &exch);
  CHECK(f == 64.0f);
  CHECK(d == 32.0);
  CHECK(__half2float(h) == 128.0f);  // exact: integers up to 2048 are halves
  CHECK(__bfloat162float(b) == 128.0f);  // exact: up to 256 in bf16
  CHECK(__low2float(h2) == 128.0f);
  CHECK(__high2float(h2) == 256.0f);
  CHECK(__low2float(b2) == 128.0f);
  CHECK(__high2float(b2) == -128.0f);
  CHECK(exch == 7.0f);
  // Returns the old value.
  float x = 1.0f;
  CHECK(atomicAdd(&x, 2.0f) == 1.0f);
  CHECK(x == 3.0f);
  __half hx = __float2half(1.0f);
  CHECK(__half2float(atomicAdd(&hx, __float2half(0.5f))) == 1.0f);
  CHECK(__half2float(hx) == 1.5f);
}
