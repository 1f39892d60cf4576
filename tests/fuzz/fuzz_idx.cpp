// libFuzzer target: the IDX readers (models/data/dataset.h, MNIST / Fashion-MNIST files) on
// arbitrary bytes. Both parsers see every input: each checks its own magic number first, so the
// fuzzer reaches either one by mutating the first four bytes.
#include "models/data/dataset.h"
#include "tests/fuzz/fuzz_util.h"

using namespace diffuse;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    Tensor images = data::parse_idx_images(data, size, "fuzz-input");
    // A parsed file is exactly its header plus one byte per pixel, each mapped into [-1, 1].
    FUZZ_CHECK(static_cast<size_t>(images.numel()) + 16 == size);
    const float* p = images.data<float>();
    for (int64_t i = 0; i < images.numel(); ++i) FUZZ_CHECK(p[i] >= -1.f && p[i] <= 1.f);
  } catch (const Error&) {
  }
  try {
    Tensor labels = data::parse_idx_labels(data, size, "fuzz-input");
    FUZZ_CHECK(static_cast<size_t>(labels.numel()) + 8 == size);
  } catch (const Error&) {
  }
  return 0;
}
