// bf16 and f16 under the emulator: conversions give CUDA's bits (round to nearest even, canonical
// NaN 0x7FFF, overflow to infinity, f16 subnormals), and arithmetic rounds once.
#include "tests/simt/simt_test_util.h"

#include <bit>

using namespace diffuse::simt::test;

namespace {

float from_bits(uint32_t u) { return std::bit_cast<float>(u); }

__global__ void convert_kernel(const float* in, unsigned short* bf, unsigned short* hf, float* back_bf, float* back_hf,
                               int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const __nv_bfloat16 b = __float2bfloat16(in[i]);
  const __half h = __float2half(in[i]);
  bf[i] = __bfloat16_as_ushort(b);
  hf[i] = __half_as_ushort(h);
  back_bf[i] = __bfloat162float(b);
  back_hf[i] = __half2float(h);
}

}  // namespace

TEST_CASE("__float2bfloat16 gives CUDA's bits", "[emu][simt]") {
  struct Case {
    uint32_t in;
    unsigned short out;
  };
  const Case cases[] = {
      {0x3f800000u, 0x3f80},  // 1
      {0x3f808000u, 0x3f80},  // tie, even below
      {0x3f818000u, 0x3f82},  // tie, even above
      {0x3f808001u, 0x3f81},  // just over the tie
      {0x40490fdbu, 0x4049},  // pi
      {0x3dcccccdu, 0x3dcd},  // 0.1
      {0x7f7fffffu, 0x7f80},  // FLT_MAX rounds to infinity
      {0x7f7f7fffu, 0x7f7f},
      {0x7f7f8000u, 0x7f80},
      {0xbf7fffffu, 0xbf80},
      {0x00000001u, 0x0000},  // smallest denormal
      {0x007fffffu, 0x0080},  // largest denormal rounds up to the smallest normal
      {0x80000000u, 0x8000},  // -0
      {0x7f800000u, 0x7f80},  // inf
      {0xff800000u, 0xff80},  // -inf
      {0x7fc00000u, 0x7fff},  // NaN: canonical
      {0xffc00001u, 0x7fff},
      {0x7f800001u, 0x7fff},  // signalling NaN
  };
  const int n = static_cast<int>(std::size(cases));
  std::vector<float> in(n), back_bf(n), back_hf(n);
  std::vector<unsigned short> bf(n), hf(n);
  for (int i = 0; i < n; ++i) in[i] = from_bits(cases[i].in);
  DF_LAUNCH(convert_kernel, 1, 32, 0, nullptr, in.data(), bf.data(), hf.data(), back_bf.data(), back_hf.data(), n);
  for (int i = 0; i < n; ++i) {
    INFO("input 0x" << std::hex << cases[i].in);
    CHECK(bf[i] == cases[i].out);
    CHECK(bits(back_bf[i]) == static_cast<uint32_t>(cases[i].out) << 16);
  }
  // The host-side helpers agree with the device path.
  CHECK(__bfloat16_as_ushort(__float2bfloat16_rz(from_bits(0x3f80ffffu))) == 0x3f80);
  CHECK(__bfloat16_as_ushort(__float2bfloat16_ru(from_bits(0x3f800001u))) == 0x3f81);
  CHECK(__bfloat16_as_ushort(__float2bfloat16_rd(from_bits(0xbf800001u))) == 0xbf81);
  CHECK(__bfloat16_as_ushort(__float2bfloat16_rd(from_bits(0x3f80ffffu))) == 0x3f80);
  const __nv_bfloat162 p = __floats2bfloat162_rn(1.0f, -2.0f);
  CHECK(__low2float(p) == 1.0f);
  CHECK(__high2float(p) == -2.0f);
}

TEST_CASE("__float2half gives CUDA's bits", "[emu][simt]") {
  struct Case {
    uint32_t in;
    unsigned short out;
  };
  const Case cases[] = {
      {0x3f800000u, 0x3c00},  // 1
      {0x3dcccccdu, 0x2e66},  // 0.1
      {0x3eaaaaabu, 0x3555},  // 1/3
      {0x40490fdbu, 0x4248},  // pi
      {0xc0200000u, 0xc100},  // -2.5
      {0x477fe000u, 0x7bff},  // 65504, the largest half
      {0x477fef00u, 0x7bff},  // 65519 rounds down
      {0x477ff000u, 0x7c00},  // 65520 is the tie to infinity
      {0x7f7fffffu, 0x7c00},
      {0x38800000u, 0x0400},  // 2^-14, the smallest normal
      {0x387fda40u, 0x03ff},  // just below: the largest subnormal
      {0x33800000u, 0x0001},  // 2^-24, the smallest subnormal
      {0x33000000u, 0x0000},  // 2^-25: tie to even zero
      {0x33400000u, 0x0001},  // 1.5 * 2^-25
      {0x322bcc77u, 0x0000},  // 1e-8
      {0x80000000u, 0x8000},  // -0
      {0xff800000u, 0xfc00},  // -inf
      {0x7fc00000u, 0x7fff},  // NaN: canonical
  };
  const int n = static_cast<int>(std::size(cases));
  std::vector<float> in(n), back_bf(n), back_hf(n);
  std::vector<unsigned short> bf(n), hf(n);
  for (int i = 0; i < n; ++i) in[i] = from_bits(cases[i].in);
  DF_LAUNCH(convert_kernel, 1, 32, 0, nullptr, in.data(), bf.data(), hf.data(), back_bf.data(), back_hf.data(), n);
  for (int i = 0; i < n; ++i) {
    INFO("input 0x" << std::hex << cases[i].in);
    CHECK(hf[i] == cases[i].out);
  }
  CHECK(__half_as_ushort(__float2half_rz(from_bits(0x477ff000u))) == 0x7bff);
  CHECK(__half_as_ushort(__float2half_rz(from_bits(0x3dcccccdu))) == 0x2e66);
}

TEST_CASE("every 16-bit value converts to float and back unchanged; midpoints round to even", "[emu][simt]") {
  // Independent of the constants above: for each pair of neighbours, the float midpoint rounds
  // to the even one and a hair either side rounds to the nearer one.
  int bad_h = 0, bad_b = 0;
  for (uint32_t u = 0; u < 0x10000u; ++u) {
    const auto h = static_cast<unsigned short>(u);
    const float fh = __half2float(__ushort_as_half(h));
    const float fb = __bfloat162float(__ushort_as_bfloat16(h));
    if (std::isnan(fh)) {
      bad_h += __half_as_ushort(__float2half(fh)) != 0x7fff;
    } else {
      bad_h += __half_as_ushort(__float2half(fh)) != h;
      if ((h & 0x7fffu) < 0x7bffu) {  // has a finite neighbour above in magnitude
        const float next = __half2float(__ushort_as_half(static_cast<unsigned short>(h + 1)));
        const float mid = fh + (next - fh) / 2;  // exact: 11-bit significands
        const unsigned short even = (h & 1u) ? static_cast<unsigned short>(h + 1) : h;
        bad_h += __half_as_ushort(__float2half(mid)) != even;
        bad_h += __half_as_ushort(__float2half(std::nextafter(mid, fh))) != h;
        bad_h += __half_as_ushort(__float2half(std::nextafter(mid, next))) != h + 1;
      }
    }
    if (std::isnan(fb)) {
      bad_b += __bfloat16_as_ushort(__float2bfloat16(fb)) != 0x7fff;
    } else {
      bad_b += __bfloat16_as_ushort(__float2bfloat16(fb)) != h;
      if ((h & 0x7fffu) < 0x7f7fu) {
        const float next = __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(h + 1)));
        const float mid = fb + (next - fb) / 2;  // (fb + next) / 2 would overflow at the top
        const unsigned short even = (h & 1u) ? static_cast<unsigned short>(h + 1) : h;
        bad_b += __bfloat16_as_ushort(__float2bfloat16(mid)) != even;
        bad_b += __bfloat16_as_ushort(__float2bfloat16(std::nextafter(mid, fb))) != h;
        bad_b += __bfloat16_as_ushort(__float2bfloat16(std::nextafter(mid, next))) != h + 1;
      }
    }
  }
  CHECK(bad_h == 0);
  CHECK(bad_b == 0);
}

TEST_CASE("16-bit arithmetic rounds the exact result once", "[emu][simt]") {
  // 1 + 2^-11 is a tie in f16 (between 1 and 1 + 2^-10): rounds to even, 1. Adding 2^-24 on top
  // breaks the tie; float would have rounded the sum first and lost it.
  const __half one = __float2half(1.0f);
  const __half tiny = __ushort_as_half(0x1000);  // 2^-11
  CHECK(__half_as_ushort(__hadd(one, tiny)) == 0x3c00);
  CHECK(__half_as_ushort(__hfma(one, __float2half(1.0f), tiny)) == 0x3c00);
  const __nv_bfloat16 a = __float2bfloat16(3.0f), b = __float2bfloat16(0.5f);
  CHECK(__bfloat162float(a * b) == 1.5f);
  CHECK(__bfloat162float(a + b) == 3.5f);
  CHECK(__bfloat162float(-a) == -3.0f);
  CHECK(__bfloat162float(__hmax(a, b)) == 3.0f);
  const __half2 h2 = __hmul2(__floats2half2_rn(2.0f, 3.0f), __floats2half2_rn(0.25f, -1.0f));
  CHECK(__low2float(h2) == 0.5f);
  CHECK(__high2float(h2) == -3.0f);
  const __nv_bfloat162 b2 = __hfma2(__floats2bfloat162_rn(1.0f, 2.0f), __floats2bfloat162_rn(3.0f, 4.0f),
                                    __float2bfloat162_rn(0.5f));
  CHECK(__low2float(b2) == 3.5f);
  CHECK(__high2float(b2) == 8.5f);
}
