// libFuzzer target: the image loader (core/image_io.h) as `images:<dir>` datasets use it: decode a
// PNG / JPEG / BMP from memory, centre-crop and resize, convert to a tensor.
//
// The requested channel count and output size are taken from the input's length, so mutations
// reach every conversion (grey, RGB, RGBA, as stored) and both the shrinking and the enlarging
// resampler without changing how the image bytes are read (decoders ignore trailing bytes).
#include "core/image_io.h"
#include "tests/fuzz/fuzz_util.h"

using namespace diffuse;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int channels = static_cast<int>(size % 5);  // 0 keeps the file's channels
  const int out_size = 1 + static_cast<int>(size % 67);
  try {
    Image8 img = decode_image_u8(data, size, channels, "fuzz-input");
    FUZZ_CHECK(img.width > 0 && img.height > 0 && img.channels >= 1 && img.channels <= 4);
    FUZZ_CHECK(img.pixels.size() == static_cast<size_t>(img.width) * img.height * img.channels);
    Image8 small = center_crop_resize(img, out_size);
    FUZZ_CHECK(small.pixels.size() == static_cast<size_t>(out_size) * out_size * img.channels);
    Tensor t = image_to_tensor(small);
    FUZZ_CHECK(t.numel() == static_cast<int64_t>(small.pixels.size()));
  } catch (const Error&) {
  }
  return 0;
}
