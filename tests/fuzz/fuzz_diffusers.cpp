// libFuzzer target: importing a diffusers UNet2DModel folder (interop::read_diffusers, what
// `diffuse import-diffusers` and diffuse_import_diffusers do before writing): config.json mapped
// onto diffuse's UNet, scheduler_config.json onto the objective, the betas and the DDPM variance,
// and the safetensors weights matched by name and shape and converted to diffuse's layouts. The
// input is the three files in one (tests/fuzz/diffusers_input.h); seeds (tests/corpus/diffusers,
// written by make_fuzz_seeds) are an exported tiny model with each scheduler configuration diffuse
// takes, and refused variants.
//
// The files go to a folder of this process under /dev/shm (memory) where there is one. Beyond not
// crashing, an accepted folder must give a training config that survives to_json / from_json, a
// schedule, weights that load into the UNet it describes, and an export of both that imports back
// to the same configs.
#include <unistd.h>

#include <filesystem>
#include <string>

#include "models/interop/diffusers.h"
#include "tests/fuzz/diffusers_input.h"
#include "tests/fuzz/fuzz_util.h"

using namespace diffuse;
namespace fs = std::filesystem;

namespace {

fs::path scratch() {
  const fs::path base = fs::is_directory("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
  return base / ("fuzz_diffusers." + std::to_string(::getpid()));
}

// Removes the scratch folder when the process exits normally (libFuzzer's -runs, -max_total_time).
struct Scratch {
  fs::path dir = scratch();
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Scratch s;
  fuzz::write_diffusers_input(std::string_view(reinterpret_cast<const char*>(data), size), s.dir);
  interop::DiffusersModel m;
  try {
    m = interop::read_diffusers(s.dir.string());
  } catch (const Error&) {
    return 0;
  }
  const nlohmann::json tj = m.train.to_json();
  FUZZ_CHECK(train::TrainConfig::from_json(tj).to_json() == tj);
  FUZZ_CHECK(train::make_schedule(m.train).T() == m.train.timesteps);
  nn::UNet unet(m.unet, nn::UNet::Undrawn{});
  unet.load_state(m.weights);  // throws (and so aborts) if the reader let a mismatch through
  // Export and import again: the same UNet config and the same noise process. (An accepted config
  // the export refuses would abort here too.)
  const nn::UNetConfig again =
      interop::unet_config_from_diffusers(interop::diffusers_config_from_unet(m.unet), "export");
  FUZZ_CHECK(again.to_json() == m.unet.to_json());
  train::TrainConfig t2 = m.train;
  interop::schedule_from_diffusers(interop::diffusers_scheduler_from(m.train), "export", m.unet.learn_sigma, t2);
  FUZZ_CHECK(t2.to_json() == tj);
  return 0;
}
