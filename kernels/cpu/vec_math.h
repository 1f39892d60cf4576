// kernels/cpu/vec_math.h: math functions the compiler can vectorise in `omp simd` loops on the
// cpu (internal to kernels/cpu).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

// DF_SIMD_CLONES before a function with hot `omp simd` loops: GCC compiles it three times, for
// AVX-512 (x86-64-v4), AVX2 (x86-64-v3) and the baseline the library is built for (x86-64: SSE2,
// 4 floats a vector), and the loader picks one by the CPU (target_clones, an ifunc). Measured on
// the AVX-512 target, GroupNorm's fused SiLU row (exp_vec and a division per element) 1.78 ns a
// value at the baseline, 0.74 AVX2, 0.50 AVX-512. The bits do not depend on which clone runs for
// a loop whose lanes are independent (no reduction across lanes; -ffp-contract=off keeps a*b+c
// two roundings on every ISA): mark only such functions. clang (the sanitizer build) does not
// clone templates: there it is nothing.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DF_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DF_SIMD_CLONES
#endif

namespace diffuse::kernels::cpu {

// exp inside `omp simd` loops: libm's expf is a scalar call; it made GroupNorm's fused SiLU
// 4-7x slower than the plain variant and dominated attention's softmax at T = 196 (measured,
// bench/norm_attention_bench). This is Cephes' expf (range reduction by ln 2 in two parts, degree-5 polynomial; max relative error
// 8e-8 on [-87, 88], checked against double exp in tests/kernels/softmax_test), written so gcc vectorises it: rounding by the
// 1.5 * 2^23 trick, 2^n built in the exponent bits. The input is clamped to [-87, 88] (so 2^n
// stays normal) on its bit pattern: integer compares vectorise, while float compares, which may
// trap on NaN under the default -ftrapping-math, keep gcc from if-converting the loop. Outside
// the range it saturates (1.6e-38, 1.7e38) instead of reaching 0 or inf: silu's limits (0 and z)
// are unaffected, and softmax's terms below e^-87 are negligible next to its largest, 1.
inline float exp_vec(float x) {
  // Negative floats order like their bits read as unsigned, positive ones like signed ints.
  const uint32_t bits = std::bit_cast<uint32_t>(x), lo = std::bit_cast<uint32_t>(-87.0f);
  const int32_t hi = std::bit_cast<int32_t>(88.0f);
  uint32_t cb = bits > lo ? lo : bits;
  cb = static_cast<int32_t>(cb) > hi ? static_cast<uint32_t>(hi) : cb;
  x = std::bit_cast<float>(cb);
  const float t = x * 1.44269504088896341f + 12582912.f;
  const float n = t - 12582912.f;  // round(x / ln 2)
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.f;
  return y * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}
inline double exp_vec(double x) { return std::exp(x); }  // f64 is for gradchecks: exact libm

}  // namespace diffuse::kernels::cpu
