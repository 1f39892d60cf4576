// kernels/simt/fp16.h: __half and __nv_bfloat16 (and their pairs) for the emulator.
//
// Conversions produce the bits CUDA produces: float -> 16 bits rounds to nearest even, NaN becomes
// the canonical 0x7FFF, overflow becomes infinity, f16 subnormals are kept. Arithmetic is done in
// double and rounded to 16 bits once (through round-to-odd float, see f64_to_f32_odd), giving the
// correctly rounded result that the GPU's native 16-bit add/mul/fma give; going through float
// would round twice. The implicit conversions to and from float mirror cuda_bf16.h and
// cuda_fp16.h, including their ambiguity for mixed `bf16 + float` (write __bfloat162float).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#include "kernels/simt/vector_types.h"

namespace diffuse::simt::fp {

constexpr unsigned short f32_to_bf16_rn(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<unsigned short>(u >> 16);
}
constexpr unsigned short f32_to_bf16_rz(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  return static_cast<unsigned short>(u >> 16);
}
// Directed roundings: away from zero when the dropped bits are non-zero and the direction
// points away from zero for this sign.
constexpr unsigned short f32_to_bf16_dir(float f, bool up) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  const bool neg = u >> 31;
  uint32_t r = u >> 16;
  if ((u & 0xffffu) && (up != neg) && (u & 0x7fffffffu) != 0x7f800000u) r += 1;
  return static_cast<unsigned short>(r);
}
constexpr float bf16_to_f32(unsigned short h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

constexpr unsigned short f32_to_f16_rn(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7fffu;
  if (a >= 0x477ff000u) return static_cast<unsigned short>(sign | 0x7c00u);  // >= 65520: rounds to inf
  if (a >= 0x38800000u) {                                                   // normal: >= 2^-14
    uint32_t r = (a - 0x38000000u) >> 13;                                   // rebias 127 -> 15
    const uint32_t rem = a & 0x1fffu;
    r += (rem > 0x1000u) || (rem == 0x1000u && (r & 1u));
    return static_cast<unsigned short>(sign | r);
  }
  const uint32_t e = a >> 23;
  if (e < 102) return static_cast<unsigned short>(sign);  // below 2^-25: rounds to zero
  // Subnormal: count units of 2^-24. The float is m * 2^(e-150), m with its implicit bit.
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - e;  // 14..24
  uint32_t r = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
  r += (rem > halfway) || (rem == halfway && (r & 1u));
  return static_cast<unsigned short>(sign | r);
}
constexpr unsigned short f32_to_f16_rz(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7fffu;
  if (a == 0x7f800000u) return static_cast<unsigned short>(sign | 0x7c00u);
  if (a >= 0x47800000u) return static_cast<unsigned short>(sign | 0x7bffu);  // finite overflow saturates
  if (a >= 0x38800000u) return static_cast<unsigned short>(sign | ((a - 0x38000000u) >> 13));
  const uint32_t e = a >> 23;
  if (e < 103) return static_cast<unsigned short>(sign);
  return static_cast<unsigned short>(sign | (((a & 0x7fffffu) | 0x800000u) >> (126 - e)));
}
constexpr float f16_to_f32(unsigned short h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (m << 13));
  if (e == 0) {
    // m * 2^-24, exact in float.
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return std::bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));
}
// double -> 16 bits without double rounding: round to float by "round to odd" (keep a sticky
// bit in the last place when the float is inexact), then to 16 bits to nearest even.
inline float f64_to_f32_odd(double d) {
  float f = static_cast<float>(d);
  if (static_cast<double>(f) != d && std::isfinite(f)) {
    uint32_t u = std::bit_cast<uint32_t>(f);
    if (!(u & 1u)) {
      const bool toward_zero = std::fabs(static_cast<double>(f)) > std::fabs(d);
      u = toward_zero ? u - 1u : u + 1u;
      f = std::bit_cast<float>(u);
    }
  }
  return f;
}

}  // namespace diffuse::simt::fp

// In a namespace for the reason given in vector_types.h; the operators live beside the types,
// where argument-dependent lookup finds them.
namespace diffuse::simt::cuda_types {

struct __half_raw {
  unsigned short x;
};
struct __half2_raw {
  unsigned short x, y;
};
struct __nv_bfloat16_raw {
  unsigned short x;
};
struct __nv_bfloat162_raw {
  unsigned short x, y;
};

struct alignas(2) DF_SIMT_MAY_ALIAS __half {
  unsigned short __x;
  __half() = default;
  constexpr __half(const __half_raw& r) : __x(r.x) {}
  constexpr __half(float f) : __x(diffuse::simt::fp::f32_to_f16_rn(f)) {}
  __half(double d) : __x(diffuse::simt::fp::f32_to_f16_rn(diffuse::simt::fp::f64_to_f32_odd(d))) {}
  __half(int v) : __half(static_cast<double>(v)) {}
  __half(unsigned int v) : __half(static_cast<double>(v)) {}
  __half(long long v) : __half(static_cast<double>(v)) {}
  __half(unsigned long long v) : __half(static_cast<double>(v)) {}
  __half(short v) : __half(static_cast<float>(v)) {}
  __half(unsigned short v) : __half(static_cast<float>(v)) {}
  constexpr operator float() const { return diffuse::simt::fp::f16_to_f32(__x); }
  constexpr operator __half_raw() const { return __half_raw{__x}; }
  explicit operator bool() const { return (__x & 0x7fffu) != 0; }
  explicit operator int() const { return static_cast<int>(static_cast<float>(*this)); }
};

struct alignas(2) DF_SIMT_MAY_ALIAS __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  constexpr __nv_bfloat16(const __nv_bfloat16_raw& r) : __x(r.x) {}
  constexpr __nv_bfloat16(float f) : __x(diffuse::simt::fp::f32_to_bf16_rn(f)) {}
  __nv_bfloat16(double d) : __x(diffuse::simt::fp::f32_to_bf16_rn(diffuse::simt::fp::f64_to_f32_odd(d))) {}
  __nv_bfloat16(int v) : __nv_bfloat16(static_cast<double>(v)) {}
  __nv_bfloat16(unsigned int v) : __nv_bfloat16(static_cast<double>(v)) {}
  __nv_bfloat16(long long v) : __nv_bfloat16(static_cast<double>(v)) {}
  __nv_bfloat16(unsigned long long v) : __nv_bfloat16(static_cast<double>(v)) {}
  __nv_bfloat16(short v) : __nv_bfloat16(static_cast<float>(v)) {}
  __nv_bfloat16(unsigned short v) : __nv_bfloat16(static_cast<float>(v)) {}
  constexpr operator float() const { return diffuse::simt::fp::bf16_to_f32(__x); }
  constexpr operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
  explicit operator bool() const { return (__x & 0x7fffu) != 0; }
  explicit operator int() const { return static_cast<int>(static_cast<float>(*this)); }
};

struct alignas(4) DF_SIMT_MAY_ALIAS __half2 {
  __half x, y;
  __half2() = default;
  constexpr __half2(__half a, __half b) : x(a), y(b) {}
  constexpr __half2(const __half2_raw& r) : x(__half_raw{r.x}), y(__half_raw{r.y}) {}
  constexpr operator __half2_raw() const { return __half2_raw{x.__x, y.__x}; }
};

struct alignas(4) DF_SIMT_MAY_ALIAS __nv_bfloat162 {
  __nv_bfloat16 x, y;
  __nv_bfloat162() = default;
  constexpr __nv_bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) : x(a), y(b) {}
  constexpr __nv_bfloat162(const __nv_bfloat162_raw& r) : x(__nv_bfloat16_raw{r.x}), y(__nv_bfloat16_raw{r.y}) {}
  constexpr operator __nv_bfloat162_raw() const { return __nv_bfloat162_raw{x.__x, y.__x}; }
};


static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2);
static_assert(sizeof(__half2) == 4 && alignof(__half2) == 4);
static_assert(sizeof(__nv_bfloat162) == 4 && alignof(__nv_bfloat162) == 4);

// ---- operators: computed in float, rounded once ------------------------------------------------
#define DF_SIMT_H16_OPS(H, H2)                                                                        \
  inline H operator+(const H& a, const H& b) { return H(static_cast<double>(a) + static_cast<double>(b)); } \
  inline H operator-(const H& a, const H& b) { return H(static_cast<double>(a) - static_cast<double>(b)); } \
  inline H operator*(const H& a, const H& b) { return H(static_cast<double>(a) * static_cast<double>(b)); } \
  inline H operator/(const H& a, const H& b) { return H(static_cast<double>(a) / static_cast<double>(b)); } \
  inline H& operator+=(H& a, const H& b) { return a = a + b; }                                      \
  inline H& operator-=(H& a, const H& b) { return a = a - b; }                                      \
  inline H& operator*=(H& a, const H& b) { return a = a * b; }                                      \
  inline H& operator/=(H& a, const H& b) { return a = a / b; }                                      \
  inline H& operator++(H& a) { return a += H(1.0f); }                                               \
  inline H& operator--(H& a) { return a -= H(1.0f); }                                               \
  inline H operator++(H& a, int) { H o = a; ++a; return o; }                                        \
  inline H operator--(H& a, int) { H o = a; --a; return o; }                                        \
  inline H operator+(const H& a) { return a; }                                                      \
  inline H operator-(const H& a) { H r = a; r.__x ^= 0x8000u; return r; }                            \
  inline bool operator==(const H& a, const H& b) { return static_cast<float>(a) == static_cast<float>(b); } \
  inline bool operator!=(const H& a, const H& b) { return static_cast<float>(a) != static_cast<float>(b); } \
  inline bool operator<(const H& a, const H& b) { return static_cast<float>(a) < static_cast<float>(b); }   \
  inline bool operator<=(const H& a, const H& b) { return static_cast<float>(a) <= static_cast<float>(b); } \
  inline bool operator>(const H& a, const H& b) { return static_cast<float>(a) > static_cast<float>(b); }   \
  inline bool operator>=(const H& a, const H& b) { return static_cast<float>(a) >= static_cast<float>(b); } \
  inline H2 operator+(const H2& a, const H2& b) { return H2(a.x + b.x, a.y + b.y); }               \
  inline H2 operator-(const H2& a, const H2& b) { return H2(a.x - b.x, a.y - b.y); }               \
  inline H2 operator*(const H2& a, const H2& b) { return H2(a.x * b.x, a.y * b.y); }               \
  inline H2 operator/(const H2& a, const H2& b) { return H2(a.x / b.x, a.y / b.y); }               \
  inline H2& operator+=(H2& a, const H2& b) { return a = a + b; }                                  \
  inline H2& operator-=(H2& a, const H2& b) { return a = a - b; }                                  \
  inline H2& operator*=(H2& a, const H2& b) { return a = a * b; }                                  \
  inline H2& operator/=(H2& a, const H2& b) { return a = a / b; }                                  \
  inline H2 operator-(const H2& a) { return H2(-a.x, -a.y); }                                      \
  inline bool operator==(const H2& a, const H2& b) { return a.x == b.x && a.y == b.y; }            \
  inline bool operator!=(const H2& a, const H2& b) { return !(a == b); }
DF_SIMT_H16_OPS(__half, __half2)
DF_SIMT_H16_OPS(__nv_bfloat16, __nv_bfloat162)
#undef DF_SIMT_H16_OPS

}  // namespace diffuse::simt::cuda_types

using diffuse::simt::cuda_types::__half;
using diffuse::simt::cuda_types::__half2;
using diffuse::simt::cuda_types::__half2_raw;
using diffuse::simt::cuda_types::__half_raw;
using diffuse::simt::cuda_types::__nv_bfloat16;
using diffuse::simt::cuda_types::__nv_bfloat162;
using diffuse::simt::cuda_types::__nv_bfloat162_raw;
using diffuse::simt::cuda_types::__nv_bfloat16_raw;
using half = __half;
using half2 = __half2;
using nv_bfloat16 = __nv_bfloat16;
using nv_bfloat162 = __nv_bfloat162;

// ---- bf16 conversions ----------------------------------------------------------------------------
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16_raw{diffuse::simt::fp::f32_to_bf16_rn(f)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rz(float f) { return __nv_bfloat16_raw{diffuse::simt::fp::f32_to_bf16_rz(f)}; }
inline __nv_bfloat16 __float2bfloat16_rd(float f) { return __nv_bfloat16_raw{diffuse::simt::fp::f32_to_bf16_dir(f, false)}; }
inline __nv_bfloat16 __float2bfloat16_ru(float f) { return __nv_bfloat16_raw{diffuse::simt::fp::f32_to_bf16_dir(f, true)}; }
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h); }
inline __nv_bfloat162 __float2bfloat162_rn(float f) { return {__float2bfloat16(f), __float2bfloat16(f)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16(a), __float2bfloat16(b)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return float2{static_cast<float>(v.x), static_cast<float>(v.y)}; }
inline float __low2float(__nv_bfloat162 v) { return static_cast<float>(v.x); }
inline float __high2float(__nv_bfloat162 v) { return static_cast<float>(v.y); }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 v) { return v.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 v) { return v.y; }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return {a, b}; }
inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 a) { return {a, a}; }
inline __nv_bfloat162 __lows2bfloat162(__nv_bfloat162 a, __nv_bfloat162 b) { return {a.x, b.x}; }
inline __nv_bfloat162 __highs2bfloat162(__nv_bfloat162 a, __nv_bfloat162 b) { return {a.y, b.y}; }
inline __nv_bfloat162 __lowhigh2highlow(__nv_bfloat162 a) { return {a.y, a.x}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline short __bfloat16_as_short(__nv_bfloat16 h) { return static_cast<short>(h.__x); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16_raw{u}; }
inline __nv_bfloat16 __short_as_bfloat16(short s) { return __nv_bfloat16_raw{static_cast<unsigned short>(s)}; }
inline __nv_bfloat16 __int2bfloat16_rn(int v) { return __nv_bfloat16(v); }
inline __nv_bfloat16 __uint2bfloat16_rn(unsigned v) { return __nv_bfloat16(v); }
inline int __bfloat162int_rz(__nv_bfloat16 h) { return static_cast<int>(static_cast<float>(h)); }

// ---- f16 conversions -----------------------------------------------------------------------------
inline __half __float2half(float f) { return __half_raw{diffuse::simt::fp::f32_to_f16_rn(f)}; }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline __half __float2half_rz(float f) { return __half_raw{diffuse::simt::fp::f32_to_f16_rz(f)}; }
inline __half __double2half(double d) { return __half(d); }
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half2 __float2half2_rn(float f) { return {__float2half(f), __float2half(f)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half(a), __float2half(b)}; }
inline __half2 __float22half2_rn(float2 v) { return __floats2half2_rn(v.x, v.y); }
inline float2 __half22float2(__half2 v) { return float2{static_cast<float>(v.x), static_cast<float>(v.y)}; }
inline float __low2float(__half2 v) { return static_cast<float>(v.x); }
inline float __high2float(__half2 v) { return static_cast<float>(v.y); }
inline __half __low2half(__half2 v) { return v.x; }
inline __half __high2half(__half2 v) { return v.y; }
inline __half2 __halves2half2(__half a, __half b) { return {a, b}; }
inline __half2 __half2half2(__half a) { return {a, a}; }
inline __half2 __lows2half2(__half2 a, __half2 b) { return {a.x, b.x}; }
inline __half2 __highs2half2(__half2 a, __half2 b) { return {a.y, b.y}; }
inline __half2 __lowhigh2highlow(__half2 a) { return {a.y, a.x}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline short __half_as_short(__half h) { return static_cast<short>(h.__x); }
inline __half __ushort_as_half(unsigned short u) { return __half_raw{u}; }
inline __half __short_as_half(short s) { return __half_raw{static_cast<unsigned short>(s)}; }
inline __half __int2half_rn(int v) { return __half(v); }
inline __half __uint2half_rn(unsigned v) { return __half(v); }
inline int __half2int_rz(__half h) { return static_cast<int>(static_cast<float>(h)); }
inline __half __float2half_rd(float f) {
  __half h = __float2half_rz(f);
  return (f < 0 && static_cast<float>(h) != f && std::isfinite(f)) ? __ushort_as_half(h.__x + 1) : h;
}
inline __half __float2half_ru(float f) {
  __half h = __float2half_rz(f);
  return (f > 0 && static_cast<float>(h) != f && std::isfinite(f)) ? __ushort_as_half(h.__x + 1) : h;
}

// ---- arithmetic intrinsics, for both 16-bit types ------------------------------------------------
#define DF_SIMT_H16_MATH(H, H2)                                                                      \
  inline H __hadd(H a, H b) { return a + b; }                                                       \
  inline H __hsub(H a, H b) { return a - b; }                                                       \
  inline H __hmul(H a, H b) { return a * b; }                                                       \
  inline H __hdiv(H a, H b) { return a / b; }                                                       \
  inline H __hfma(H a, H b, H c) {                                                                  \
    return H(std::fma(static_cast<double>(a), static_cast<double>(b), static_cast<double>(c)));        \
  }                                                                                                 \
  inline H __hneg(H a) { return -a; }                                                               \
  inline H __habs(H a) { H r = a; r.__x &= 0x7fffu; return r; }                                      \
  inline H __hmax(H a, H b) { return H(std::fmax(static_cast<float>(a), static_cast<float>(b))); }  \
  inline H __hmin(H a, H b) { return H(std::fmin(static_cast<float>(a), static_cast<float>(b))); }  \
  inline bool __heq(H a, H b) { return a == b; }                                                    \
  inline bool __hne(H a, H b) { return a != b; }                                                    \
  inline bool __hlt(H a, H b) { return a < b; }                                                     \
  inline bool __hle(H a, H b) { return a <= b; }                                                    \
  inline bool __hgt(H a, H b) { return a > b; }                                                     \
  inline bool __hge(H a, H b) { return a >= b; }                                                    \
  inline bool __hisnan(H a) { return std::isnan(static_cast<float>(a)); }                          \
  inline int __hisinf(H a) {                                                                        \
    const float f = static_cast<float>(a);                                                          \
    return std::isinf(f) ? (f < 0 ? -1 : 1) : 0;                                                    \
  }                                                                                                 \
  inline H hexp(H a) { return H(std::exp(static_cast<float>(a))); }                                 \
  inline H hlog(H a) { return H(std::log(static_cast<float>(a))); }                                 \
  inline H hsqrt(H a) { return H(std::sqrt(static_cast<float>(a))); }                               \
  inline H hrsqrt(H a) { return H(1.0f / std::sqrt(static_cast<float>(a))); }                       \
  inline H hrcp(H a) { return H(1.0f / static_cast<float>(a)); }                                   \
  inline H htanh(H a) { return H(std::tanh(static_cast<float>(a))); }                               \
  inline H2 __hadd2(H2 a, H2 b) { return a + b; }                                                   \
  inline H2 __hsub2(H2 a, H2 b) { return a - b; }                                                   \
  inline H2 __hmul2(H2 a, H2 b) { return a * b; }                                                   \
  inline H2 __h2div(H2 a, H2 b) { return a / b; }                                                   \
  inline H2 __hfma2(H2 a, H2 b, H2 c) { return H2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)); } \
  inline H2 __hneg2(H2 a) { return -a; }                                                            \
  inline H2 __habs2(H2 a) { return H2(__habs(a.x), __habs(a.y)); }                                  \
  inline H2 __hmax2(H2 a, H2 b) { return H2(__hmax(a.x, b.x), __hmax(a.y, b.y)); }                  \
  inline H2 __hmin2(H2 a, H2 b) { return H2(__hmin(a.x, b.x), __hmin(a.y, b.y)); }
DF_SIMT_H16_MATH(__half, __half2)
DF_SIMT_H16_MATH(__nv_bfloat16, __nv_bfloat162)
#undef DF_SIMT_H16_MATH
