// The portability contract end to end: tests/simt/portable_sample.cu (which nvcc also compiles)
// run through the emulator, plus the device intrinsics that kernels use.
#include "tests/simt/simt_test_util.h"

#include "tests/simt/portable_sample.cu"

using namespace diffuse::simt::test;

namespace {

__global__ void intrinsics_kernel(const float* x, float* out) {
  const float v = x[threadIdx.x];
  float* o = out + threadIdx.x * 12;
  o[0] = __expf(v);
  o[1] = __logf(v + 2.0f);
  o[2] = __fdividef(v, 3.0f);
  o[3] = rsqrtf(v + 2.0f);
  o[4] = __frcp_rn(v + 2.0f);
  o[5] = __fmul_rn(v, 3.0f);
  o[6] = __fadd_rn(v, 0.5f);
  o[7] = __fmaf_rn(v, 2.0f, 1.0f);
  o[8] = __saturatef(v);
  o[9] = __ldg(x + threadIdx.x);
  o[10] = fmaxf(v, 0.0f) + fminf(v, 0.0f);
  o[11] = static_cast<float>(__float2int_rn(v * 10.0f));
}

}  // namespace

TEST_CASE("portable_sample.cu runs under the emulator", "[emu][simt]") {
  const int n = 300;  // three blocks of 128, the last partial
  std::vector<float> x(n), y(n, -1.0f);
  for (int i = 0; i < n; ++i) x[i] = static_cast<float>(i % 9) - 4.0f;
  for_each_order([&] {
    diffuse::emu::sample_forward(x.data(), y.data(), 2.0f, n, nullptr);
    for (int i = 0; i < n; ++i) {
      float total = 0;
      for (int j = i / 128 * 128; j < std::min(n, i / 128 * 128 + 128); ++j) total += x[j];
      REQUIRE(y[i] == 2.0f * x[i] + total);
    }
  });
}

TEST_CASE("device intrinsics", "[emu][simt]") {
  const std::vector<float> x = {-1.5f, -0.25f, 0.0f, 0.25f, 0.75f, 1.5f, 0.05f, -0.05f};
  const int n = static_cast<int>(x.size());
  std::vector<float> out(n * 12);
  DF_LAUNCH(intrinsics_kernel, 1, n, 0, nullptr, x.data(), out.data());
  for (int t = 0; t < n; ++t) {
    const float v = x[t];
    const float* o = out.data() + t * 12;
    // The fast-math forms are approximate on the GPU; here they are within 2 ulp of libm.
    CHECK(o[0] == Approx(std::exp(v)).epsilon(1e-6));
    CHECK(o[1] == Approx(std::log(v + 2.0f)).epsilon(1e-6));
    CHECK(o[2] == Approx(v / 3.0f).epsilon(1e-6));
    CHECK(o[3] == Approx(1.0 / std::sqrt(v + 2.0)).epsilon(1e-6));
    CHECK(o[4] == 1.0f / (v + 2.0f));
    CHECK(o[5] == v * 3.0f);
    CHECK(o[6] == v + 0.5f);
    CHECK(o[7] == std::fma(v, 2.0f, 1.0f));
    CHECK(o[8] == std::min(std::max(v, 0.0f), 1.0f));
    CHECK(o[9] == v);
    CHECK(o[10] == v);
    CHECK(o[11] == std::nearbyint(v * 10.0f));  // to nearest even: 0.5 -> 0, -0.5 -> 0
  }
  CHECK(__saturatef(std::nanf("")) == 0.0f);
  CHECK(__float2int_rn(2.5f) == 2);
  CHECK(__float2int_rn(3.5f) == 4);
  CHECK(__float2int_rz(-2.7f) == -2);
  CHECK(__float2int_rd(-2.2f) == -3);
  CHECK(__float2int_ru(2.2f) == 3);
  CHECK(__float2int_rn(1e20f) == INT_MAX);  // saturates, as cvt does
  CHECK(__float2int_rn(std::nanf("")) == 0);
  CHECK(__popc(0xf0f0u) == 8);
  CHECK(__clz(1) == 31);
  CHECK(__ffs(8) == 4);
  CHECK(__brev(1u) == 0x80000000u);
  CHECK(__umulhi(0x80000000u, 4u) == 2u);
  CHECK(__byte_perm(0x33221100u, 0x77665544u, 0x7531u) == 0x77553311u);
  CHECK(__float_as_uint(1.0f) == 0x3f800000u);
  CHECK(min(3, -4) == -4);
  CHECK(max(2.5f, 1.0f) == 2.5f);
  const float4 f4 = make_float4(1, 2, 3, 4);
  CHECK(f4.w == 4.0f);
  static_assert(alignof(float4) == 16 && alignof(int4) == 16 && alignof(float2) == 8);
}

TEST_CASE("df_memset_async and df_memcpy_async run at once under the emulator", "[emu][simt]") {
  std::vector<int> a(16, 5), b(16, 0);
  df_memset_async(a.data(), 0, 8 * sizeof(int), nullptr);
  df_memcpy_async(b.data(), a.data(), 16 * sizeof(int), nullptr);
  for (int i = 0; i < 16; ++i) CHECK(b[i] == (i < 8 ? 0 : 5));
}
