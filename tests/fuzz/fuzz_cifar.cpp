// libFuzzer target: the CIFAR-10 binary batch reader (models/data/dataset.h) on arbitrary bytes.
#include "models/data/dataset.h"
#include "tests/fuzz/fuzz_util.h"

using namespace diffuse;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    data::Dataset d = data::parse_cifar10(data, size, "fuzz-input");
    // Whole 3073-byte records only, labels 0..9.
    FUZZ_CHECK(static_cast<size_t>(d.size()) * 3073 == size);
    const int64_t* l = d.labels.data<int64_t>();
    for (int64_t i = 0; i < d.size(); ++i) FUZZ_CHECK(l[i] >= 0 && l[i] < 10);
  } catch (const Error&) {
  }
  return 0;
}
