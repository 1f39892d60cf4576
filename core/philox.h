// core/philox.h: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC 2011), counter-based, and the uniform and normal transforms on top of it.
//
// One definition serves host code, CUDA kernels and the emulator, so a seed gives bit-identical
// variates on every device. That includes the normal transform: Box-Muller needs log, sin and
// cos, whose library versions differ between glibc and CUDA by an ulp, so we evaluate them here
// with a fixed sequence of correctly rounded operations (explicit fmaf, and on the GPU the _rn
// intrinsics, which nvcc never contracts). Host code is compiled with -ffp-contract=off.
//
// Stream layout: a stream is keyed by (seed, offset). Element i of the stream comes from the
// Philox block at counter {lo(i/4), hi(i/4), lo(offset), hi(offset)} with key {lo(seed),
// hi(seed)}, word i%4. Normal variates pair words (0,1) and (2,3) in Box-Muller.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/hd.h"

namespace diffuse {

struct Philox4 {
  uint32_t v[4];
};

DF_HD_INLINE void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// The raw generator: 10 rounds of the Philox S-box, key bumped between rounds.
DF_HD_INLINE Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;  // multipliers (paper, Table 2)
  constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;  // Weyl key increments
#if defined(__CUDA_ARCH__)  // the host pass of nvcc is gcc, which warns on an unknown pragma
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    if (r > 0) { k0 += W0; k1 += W1; }
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(M0, ctr.v[0], hi0, lo0);
    philox_mulhilo(M1, ctr.v[2], hi1, lo1);
    ctr = Philox4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
  }
  return ctr;
}

// The block that holds elements 4*block .. 4*block+3 of stream (seed, offset).
DF_HD_INLINE Philox4 philox_block(uint64_t seed, uint64_t offset, uint64_t block) {
  Philox4 c{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
             static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)}};
  return philox4x32_10(c, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

namespace philox_detail {

#if defined(__CUDA_ARCH__)
DF_HD_INLINE float mul(float a, float b) { return __fmul_rn(a, b); }
DF_HD_INLINE float add(float a, float b) { return __fadd_rn(a, b); }
DF_HD_INLINE float div(float a, float b) { return __fdiv_rn(a, b); }
DF_HD_INLINE float sqrt(float a) { return __fsqrt_rn(a); }
DF_HD_INLINE float fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
DF_HD_INLINE uint32_t bits(float f) { return __float_as_uint(f); }
DF_HD_INLINE float from_bits(uint32_t u) { return __uint_as_float(u); }
#else
inline float mul(float a, float b) { return a * b; }
inline float add(float a, float b) { return a + b; }
inline float div(float a, float b) { return a / b; }
inline float sqrt(float a) { return __builtin_sqrtf(a); }
inline float fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline uint32_t bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
#endif

// ln(u) for u in (0, 1]: u = m * 2^e with m in [sqrt(1/2), sqrt(2)); ln m = 2 atanh(s),
// s = (m-1)/(m+1), |s| <= 0.1716, so the odd series to s^11 is below 3e-10 of truncation error.
DF_HD_INLINE float log_unit(float u) {
  uint32_t b = bits(u);
  int e = static_cast<int>((b >> 23) & 0xffu) - 127;
  float m = from_bits((b & 0x7fffffu) | 0x3f800000u);
  if (m > 1.41421356f) { m = mul(m, 0.5f); e += 1; }
  float f = add(m, -1.0f);  // exact (Sterbenz)
  float s = div(f, add(f, 2.0f));
  float z = mul(s, s);
  float p = fma(z, 1.0f / 11.0f, 1.0f / 9.0f);
  p = fma(z, p, 1.0f / 7.0f);
  p = fma(z, p, 1.0f / 5.0f);
  p = fma(z, p, 1.0f / 3.0f);
  p = fma(z, p, 1.0f);
  float lnm = mul(mul(2.0f, s), p);
  return fma(static_cast<float>(e), 0.693147180559945f, lnm);
}

// sin and cos of 2*pi*x for x in [0, 1): quarter-turn reduction (exact for x on the 2^-24 grid),
// then Taylor polynomials on [-pi/4, pi/4] (truncation below 2e-9).
DF_HD_INLINE void sincos_turns(float x, float& s_out, float& c_out) {
  int q = static_cast<int>(mul(x, 4.0f) + 0.5f);  // nearest quarter turn, 0..4
  float y = add(x, mul(static_cast<float>(q), -0.25f));
  float t = mul(y, 6.28318530717958648f);
  float t2 = mul(t, t);
  float sp = fma(t2, 1.0f / 362880.0f, -1.0f / 5040.0f);
  sp = fma(t2, sp, 1.0f / 120.0f);
  sp = fma(t2, sp, -1.0f / 6.0f);
  float s = fma(mul(t, t2), sp, t);
  float cp = fma(t2, -1.0f / 3628800.0f, 1.0f / 40320.0f);
  cp = fma(t2, cp, -1.0f / 720.0f);
  cp = fma(t2, cp, 1.0f / 24.0f);
  cp = fma(t2, cp, -0.5f);
  float c = fma(t2, cp, 1.0f);
  switch (q & 3) {
    case 0: s_out = s; c_out = c; break;
    case 1: s_out = c; c_out = -s; break;
    case 2: s_out = -s; c_out = -c; break;
    default: s_out = -c; c_out = s; break;
  }
}

}  // namespace philox_detail

// Uniform in [0, 1) on the 2^-24 grid: every value is exact in float.
DF_HD_INLINE float philox_uniform_bits(uint32_t w) {
  return static_cast<float>(w >> 8) * (1.0f / 16777216.0f);
}

// Four standard normals from one Philox block (Box-Muller on words (0,1) and (2,3)).
DF_HD_INLINE void philox_normal4(const Philox4& r, float out[4]) {
  for (int p = 0; p < 2; ++p) {
    // u1 in (0, 1] so the log is finite; u2 in [0, 1).
    float u1 = static_cast<float>((r.v[2 * p] >> 8) + 1u) * (1.0f / 16777216.0f);
    float u2 = philox_uniform_bits(r.v[2 * p + 1]);
    float rad = philox_detail::sqrt(philox_detail::mul(-2.0f, philox_detail::log_unit(u1)));
    float s, c;
    philox_detail::sincos_turns(u2, s, c);
    // + 0: u1 = 1 gives rad = 0, and 0 times a negative sine or cosine is -0; every consumer must
    // see the same bits, and Tensor::randn's mean + std z turns -0 into +0, so the transform
    // itself never returns -0 (x + 0 is x for every other x).
    out[2 * p] = philox_detail::add(philox_detail::mul(rad, c), 0.0f);
    out[2 * p + 1] = philox_detail::add(philox_detail::mul(rad, s), 0.0f);
  }
}

// Element i of the normal stream (seed, offset).
DF_HD_INLINE float philox_normal(uint64_t seed, uint64_t offset, uint64_t i) {
  float z[4];
  philox_normal4(philox_block(seed, offset, i >> 2), z);
  return z[i & 3];
}

// Element i of the uniform [0, 1) stream (seed, offset).
DF_HD_INLINE float philox_uniform(uint64_t seed, uint64_t offset, uint64_t i) {
  return philox_uniform_bits(philox_block(seed, offset, i >> 2).v[i & 3]);
}

}  // namespace diffuse
