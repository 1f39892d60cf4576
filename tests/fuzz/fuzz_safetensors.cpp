// libFuzzer target: the safetensors reader (core/safetensors.h) on arbitrary bytes.
// The contract under test: any input either parses or throws one diffuse::Error; no other
// exception, crash, sanitizer report, hang or outsized allocation. What parses must survive a
// write/read round trip unchanged, so the reader and the writer agree on the format.
#include <cstring>

#include "core/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

using namespace diffuse;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  SafeTensors st;
  try {
    st = parse_safetensors(data, size, "fuzz-input");
  } catch (const Error&) {
    return 0;
  }
  std::vector<std::pair<std::string, Tensor>> list(st.tensors.begin(), st.tensors.end());
  std::vector<uint8_t> bytes;
  try {
    bytes = serialize_safetensors(list, st.metadata);
  } catch (const Error&) {
    return 0;  // e.g. a tensor name that is not valid UTF-8: JSON cannot write it back
  }
  SafeTensors again = parse_safetensors(bytes.data(), bytes.size(), "round-trip");
  FUZZ_CHECK(again.metadata == st.metadata);
  FUZZ_CHECK(again.tensors.size() == st.tensors.size());
  for (const auto& [name, t] : st.tensors) {
    const Tensor& u = again.tensors.at(name);
    FUZZ_CHECK(u.dtype() == t.dtype() && u.shape() == t.shape());
    FUZZ_CHECK(t.nbytes() == 0 || std::memcmp(u.raw(), t.raw(), t.nbytes()) == 0);
  }
  return 0;
}
