// libFuzzer target: loading an autoencoder checkpoint (train::load_autoencoder, what `diffuse train
// --autoencoder` does with the file it is given): the safetensors container, the metadata (format,
// the training and autoencoder configs as JSON text, the step), then the weights matched by name
// and shape against the model the config describes. Seeds (tests/corpus/autoencoder) are a real
// tiny checkpoint and variants with a missing, a renamed and a misshapen tensor and the config of
// another model. The autoencoder inside a latent diffusion checkpoint is read by
// train::load_checkpoint, fuzzed by fuzz_checkpoint (its seeds hold a latent model too).
//
// The input reaches the loader through its real, path-based entry point: a memfd opened as
// /proc/self/fd/N, so no disk is touched.
#include <sys/mman.h>
#include <unistd.h>

#include <string>

#include "models/train/autoencoder_trainer.h"
#include "tests/fuzz/fuzz_util.h"

using namespace diffuse;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const int fd = ::memfd_create("fuzz_autoencoder", MFD_CLOEXEC);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  FUZZ_CHECK(fd >= 0);
  FUZZ_CHECK(::ftruncate(fd, 0) == 0);
  FUZZ_CHECK(size == 0 || ::pwrite(fd, data, size, 0) == static_cast<ssize_t>(size));
  try {
    train::LoadedAutoencoder a = train::load_autoencoder(path, Device::cpu());
    FUZZ_CHECK(a.net != nullptr);
  } catch (const Error&) {
  }
  return 0;
}
