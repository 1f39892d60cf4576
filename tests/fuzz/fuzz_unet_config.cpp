// libFuzzer target: the UNet configuration (models/nn/unet.h) from JSON text, as `--model '{...}'`
// and a checkpoint's metadata supply it. A config that is accepted must validate and survive
// to_json / from_json unchanged.
#include <nlohmann/json.hpp>

#include "models/nn/unet.h"
#include "tests/fuzz/fuzz_util.h"

using namespace diffuse;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;  // not JSON: the callers report the parse error themselves
  }
  try {
    nn::UNetConfig c = nn::UNetConfig::from_json(j);
    c.validate();
    nn::UNetConfig again = nn::UNetConfig::from_json(c.to_json());
    FUZZ_CHECK(again.to_json() == c.to_json());
  } catch (const Error&) {
  }
  return 0;
}
