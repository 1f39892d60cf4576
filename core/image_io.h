// core/image_io.h: PNG / JPEG in and out, at the edge where NHWC float tensors in [-1, 1] meet
// 8-bit pixels.
//
// Mapping: a pixel byte p reads as p / 127.5 - 1 (0 -> -1, 255 -> 1, exact in float); a float x
// writes as round((x + 1) * 127.5) clamped to [0, 255], NaN as 0. Reading what was written gives
// back the same bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace diffuse {

// An 8-bit image: rows top to bottom, channels interleaved (HWC).
struct Image8 {
  int width = 0, height = 0, channels = 0;
  std::vector<uint8_t> pixels;  // height * width * channels
};

// Decodes PNG, JPEG or BMP. channels: 0 keeps what the file has (1 to 4), 1 converts to grey,
// 3 to RGB, 4 to RGBA. A missing, unreadable or undecodable file throws diffuse::Error naming it
// and the decoder's reason. Images over 32768 pixels on a side are refused (a tiny hostile file
// must not make us allocate gigabytes).
Image8 read_image_u8(const std::string& path, int channels = 0);
Image8 decode_image_u8(const uint8_t* data, size_t n, int channels, const std::string& name_for_errors);

// The same as an (H, W, C) f32 tensor in [-1, 1].
Tensor read_image(const std::string& path, int channels = 0);
Tensor image_to_tensor(const Image8& img);

// Centre crop to a square on the short side, then resize to size x size: area averaging when
// shrinking (no aliasing), bilinear when enlarging.
Image8 center_crop_resize(const Image8& img, int size);

// Float in [-1, 1] to a byte, rounding to nearest and clamping (NaN -> 0).
uint8_t float_to_pixel(float x);

// (H, W, C) or (1, H, W, C) tensor, any float dtype, any device; C is 1 (grey) or 3 (RGB).
// `scale` repeats each pixel scale x scale times, so 28x28 samples are visible.
Image8 tensor_to_image(const Tensor& image, int scale = 1);

// A batch (N, H, W, C) laid out in a near-square grid (ceil(sqrt(N)) columns unless `cols` is
// given) with `border` pixels of white around and between the images; empty cells stay white.
Image8 make_grid(const Tensor& batch, int scale = 1, int border = 2, int cols = 0);

std::vector<uint8_t> encode_png(const Image8& img);

// Writes atomically (temporary file, fsync, rename; see core/file_io.h); an error names the path.
void write_png(const std::string& path, const Image8& img);
void write_png(const std::string& path, const Tensor& image, int scale = 1);
void write_png_grid(const std::string& path, const Tensor& batch, int scale = 1, int border = 2);

}  // namespace diffuse
