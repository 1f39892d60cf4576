// kernels/simt/device_math.h: CUDA's device intrinsics, atomics and cache-hinted loads for the
// emulator, under their CUDA names in the global namespace.
//
// The fast-math intrinsics (__expf, __logf, __fdividef ...) are computed at full precision here;
// on the GPU they are approximate (a few ulp, see the CUDA C Programming Guide, "Intrinsic
// Functions"), so tests that use them compare with a tolerance that covers the GPU's error.
// The _rn/_rz forms round exactly as named. The host build compiles with -ffp-contract=off, so
// __fmul_rn(a, b) + c is never fused here either.
#pragma once

#include <atomic>
#include <bit>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/simt/fp16.h"
#include "kernels/simt/vector_types.h"

// ---- float intrinsics ------------------------------------------------------------------------------
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __log10f(float x) { return std::log10(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline void __sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / std::cbrt(x); }
inline float exp10f(float x) { return std::pow(10.0f, x); }
inline float sinpif(float x) { return std::sin(static_cast<float>(M_PI) * x); }
inline float cospif(float x) { return std::cos(static_cast<float>(M_PI) * x); }
inline void sincospif(float x, float* s, float* c) { *s = sinpif(x); *c = cospif(x); }
inline float normcdff(float x) { return 0.5f * std::erfc(-x * static_cast<float>(M_SQRT1_2)); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __frsqrt_rn(float x) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(x))); }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
// Clamp to [0, 1]; NaN goes to 0, as on the GPU.
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }

using std::fmaxf;
using std::fminf;
// CUDA's classification functions, callable unqualified in device code.
using std::isfinite;
using std::isinf;
using std::isnan;

// CUDA's min/max overloads for arithmetic types (global, unlike std::min/max).
#define DF_SIMT_MINMAX(T)                                  \
  inline T min(T a, T b) { return b < a ? b : a; }         \
  inline T max(T a, T b) { return a < b ? b : a; }
DF_SIMT_MINMAX(int)
DF_SIMT_MINMAX(unsigned int)
DF_SIMT_MINMAX(long long)
DF_SIMT_MINMAX(unsigned long long)
#undef DF_SIMT_MINMAX
inline long min(long a, long b) { return b < a ? b : a; }
inline long max(long a, long b) { return a < b ? b : a; }
inline unsigned long min(unsigned long a, unsigned long b) { return b < a ? b : a; }
inline unsigned long max(unsigned long a, unsigned long b) { return a < b ? b : a; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// ---- conversions: rounding as named, saturating like cvt.*.s32.f32 (NaN -> 0) --------------------
namespace diffuse::simt::detail {
template <class I>
I saturate_cast(double r) {
  if (std::isnan(r)) return 0;
  if (r <= static_cast<double>(std::numeric_limits<I>::min())) return std::numeric_limits<I>::min();
  if (r >= static_cast<double>(std::numeric_limits<I>::max())) return std::numeric_limits<I>::max();
  return static_cast<I>(r);
}
}  // namespace diffuse::simt::detail
inline int __float2int_rn(float x) { return diffuse::simt::detail::saturate_cast<int>(std::nearbyint(static_cast<double>(x))); }
inline int __float2int_rz(float x) { return diffuse::simt::detail::saturate_cast<int>(std::trunc(static_cast<double>(x))); }
inline int __float2int_rd(float x) { return diffuse::simt::detail::saturate_cast<int>(std::floor(static_cast<double>(x))); }
inline int __float2int_ru(float x) { return diffuse::simt::detail::saturate_cast<int>(std::ceil(static_cast<double>(x))); }
inline unsigned __float2uint_rn(float x) { return diffuse::simt::detail::saturate_cast<unsigned>(std::nearbyint(static_cast<double>(x))); }
inline unsigned __float2uint_rz(float x) { return diffuse::simt::detail::saturate_cast<unsigned>(std::trunc(static_cast<double>(x))); }
inline long long __float2ll_rn(float x) { return diffuse::simt::detail::saturate_cast<long long>(std::nearbyint(static_cast<double>(x))); }
inline long long __float2ll_rz(float x) { return diffuse::simt::detail::saturate_cast<long long>(std::trunc(static_cast<double>(x))); }
inline int __double2int_rn(double x) { return diffuse::simt::detail::saturate_cast<int>(std::nearbyint(x)); }
inline int __double2int_rz(double x) { return diffuse::simt::detail::saturate_cast<int>(std::trunc(x)); }
inline float __int2float_rn(int v) { return static_cast<float>(v); }
inline float __uint2float_rn(unsigned v) { return static_cast<float>(v); }
inline float __ll2float_rn(long long v) { return static_cast<float>(v); }
inline float __double2float_rn(double v) { return static_cast<float>(v); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline float __uint_as_float(unsigned v) { return std::bit_cast<float>(v); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline double __longlong_as_double(long long v) { return std::bit_cast<double>(v); }

// ---- integer intrinsics ---------------------------------------------------------------------------
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return std::countl_zero(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return x ? std::countr_zero(static_cast<unsigned>(x)) + 1 : 0; }
inline int __ffsll(long long x) { return x ? std::countr_zero(static_cast<unsigned long long>(x)) + 1 : 0; }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32); }
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<int64_t>(a) * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
inline long long __mul64hi(long long a, long long b) { return static_cast<long long>((static_cast<__int128>(a) * b) >> 64); }
inline int __mul24(int a, int b) { return static_cast<int>(static_cast<unsigned>((a << 8) >> 8) * static_cast<unsigned>((b << 8) >> 8)); }
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned s) {
  return static_cast<unsigned>(((static_cast<uint64_t>(hi) << 32 | lo) << (s & 31)) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned s) {
  return static_cast<unsigned>((static_cast<uint64_t>(hi) << 32 | lo) >> (s & 31));
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t v = static_cast<uint64_t>(y) << 32 | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
  return r;
}

// ---- loads and stores with cache hints: plain memory accesses here ----------------------------------
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---- atomics ------------------------------------------------------------------------------------
// One launch runs on one host thread and fibers never preempt, so a plain read-modify-write would
// already be atomic among a launch's threads; std::atomic_ref keeps them atomic also against
// launches on other host threads, as device-wide atomics are. Each returns the old value.
namespace diffuse::simt::detail {
template <class T, class F>
T atomic_update(T* p, F f) {
  std::atomic_ref<T> r(*p);
  T old = r.load(std::memory_order_relaxed);
  while (!r.compare_exchange_weak(old, f(old), std::memory_order_seq_cst, std::memory_order_relaxed)) {
  }
  return old;
}
// 16-bit floats: compare-and-swap on their bits.
template <class H>
H atomic_update16(H* p, H v) {
  static_assert(sizeof(H) == 2);
  std::atomic_ref<unsigned short> r(reinterpret_cast<unsigned short&>(*p));
  unsigned short old = r.load(std::memory_order_relaxed);
  for (;;) {
    H o;
    std::memcpy(&o, &old, 2);
    const H n = o + v;
    unsigned short nb;
    std::memcpy(&nb, &n, 2);
    if (r.compare_exchange_weak(old, nb)) return o;
  }
}
}  // namespace diffuse::simt::detail

#define DF_SIMT_ATOMIC_INT(T)                                                                        \
  inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }                     \
  inline T atomicExch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v); }                     \
  inline T atomicMin(T* p, T v) { return diffuse::simt::detail::atomic_update(p, [v](T o) { return v < o ? v : o; }); } \
  inline T atomicMax(T* p, T v) { return diffuse::simt::detail::atomic_update(p, [v](T o) { return o < v ? v : o; }); } \
  inline T atomicAnd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_and(v); }                     \
  inline T atomicOr(T* p, T v) { return std::atomic_ref<T>(*p).fetch_or(v); }                       \
  inline T atomicXor(T* p, T v) { return std::atomic_ref<T>(*p).fetch_xor(v); }                     \
  inline T atomicCAS(T* p, T compare, T v) {                                                        \
    std::atomic_ref<T>(*p).compare_exchange_strong(compare, v);                                     \
    return compare;                                                                                 \
  }
DF_SIMT_ATOMIC_INT(int)
DF_SIMT_ATOMIC_INT(unsigned int)
DF_SIMT_ATOMIC_INT(unsigned long long)
#undef DF_SIMT_ATOMIC_INT
inline int atomicSub(int* p, int v) { return std::atomic_ref<int>(*p).fetch_sub(v); }
inline unsigned atomicSub(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_sub(v); }
inline long long atomicMin(long long* p, long long v) {
  return diffuse::simt::detail::atomic_update(p, [v](long long o) { return v < o ? v : o; });
}
inline long long atomicMax(long long* p, long long v) {
  return diffuse::simt::detail::atomic_update(p, [v](long long o) { return o < v ? v : o; });
}
inline unsigned short atomicCAS(unsigned short* p, unsigned short compare, unsigned short v) {
  std::atomic_ref<unsigned short>(*p).compare_exchange_strong(compare, v);
  return compare;
}
// ((old >= limit) ? 0 : old + 1), and ((old == 0 || old > limit) ? limit : old - 1), as CUDA defines them.
inline unsigned atomicInc(unsigned* p, unsigned limit) {
  return diffuse::simt::detail::atomic_update(p, [limit](unsigned o) { return o >= limit ? 0u : o + 1u; });
}
inline unsigned atomicDec(unsigned* p, unsigned limit) {
  return diffuse::simt::detail::atomic_update(p, [limit](unsigned o) { return (o == 0u || o > limit) ? limit : o - 1u; });
}
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline double atomicAdd(double* p, double v) { return std::atomic_ref<double>(*p).fetch_add(v); }
inline float atomicExch(float* p, float v) { return std::atomic_ref<float>(*p).exchange(v); }
inline __half atomicAdd(__half* p, __half v) { return diffuse::simt::detail::atomic_update16(p, v); }
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* p, __nv_bfloat16 v) { return diffuse::simt::detail::atomic_update16(p, v); }
// The pair forms are atomic per 16-bit half on the GPU too (the guide says so), not as a pair.
inline __half2 atomicAdd(__half2* p, __half2 v) { return {atomicAdd(&p->x, v.x), atomicAdd(&p->y, v.y)}; }
inline __nv_bfloat162 atomicAdd(__nv_bfloat162* p, __nv_bfloat162 v) { return {atomicAdd(&p->x, v.x), atomicAdd(&p->y, v.y)}; }
