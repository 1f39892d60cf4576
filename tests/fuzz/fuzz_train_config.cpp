// libFuzzer target: the training configuration (models/train/trainer.h) from JSON text, as a
// checkpoint's metadata supplies it on resume, and the UNet config derived from it (the preset
// with the "model" overrides applied). Accepted configs must survive to_json / from_json.
#include <nlohmann/json.hpp>

#include "models/train/trainer.h"
#include "tests/fuzz/fuzz_util.h"

using namespace diffuse;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  try {
    train::TrainConfig c = train::TrainConfig::from_json(j);
    FUZZ_CHECK(train::TrainConfig::from_json(c.to_json()).to_json() == c.to_json());
    c.unet_config(28, 1, 10);
  } catch (const Error&) {
  }
  return 0;
}
