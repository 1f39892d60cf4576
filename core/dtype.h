// core/dtype.h: element types, and host conversions for the 16-bit floats.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace diffuse {

// f64 exists for the CPU only: gradchecks run the reference loops in double.
enum class DType : uint8_t { f32, bf16, f16, i32, i64, u8, f64 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: case DType::i32: return 4;
    case DType::bf16: case DType::f16: return 2;
    case DType::i64: case DType::f64: return 8;
    case DType::u8: return 1;
  }
  return 0;
}

const char* dtype_name(DType t);                 // "f32", "bf16", ...
DType dtype_from_name(std::string_view name);    // throws on an unknown name
bool dtype_is_float(DType t);

// Host storage types for the 16-bit floats: bits only; arithmetic happens in f32.
struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };

inline float bf16_to_float(bf16_t h) {
  uint32_t u = static_cast<uint32_t>(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, NaN kept quiet: the same bits as CUDA's __float2bfloat16.
inline bf16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t{static_cast<uint16_t>(u >> 16)};
}

float f16_to_float(f16_t h);
f16_t float_to_f16(float f);  // round to nearest even, as CUDA's __float2half

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<bf16_t>() { return DType::bf16; }
template <> constexpr DType dtype_of<f16_t>() { return DType::f16; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::u8; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }

}  // namespace diffuse
