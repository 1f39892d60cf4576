// models/data/pixels.h (internal): the one byte-to-float mapping every loader shares.
#pragma once

#include <cstddef>
#include <cstdint>

namespace diffuse::data::detail {

// 0 -> -1 and 255 -> 1 exactly; the inverse of float_to_pixel in core/image_io.h.
inline float pixel_to_float(uint8_t p) { return static_cast<float>(p) / 127.5f - 1.0f; }

inline void pixels_to_floats(const uint8_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = pixel_to_float(src[i]);
}

}  // namespace diffuse::data::detail
