// libFuzzer target: loading a model from a checkpoint (train::load_checkpoint, what `diffuse
// sample` and `diffuse eval` do with a file they are given): the safetensors container, the
// metadata (format, the training and UNet configs as JSON text, the step), then the weights
// matched by name and shape against the model the config describes. Seeds (tests/corpus/
// checkpoint) are a real tiny checkpoint and variants with wrong names, wrong shapes, missing
// tensors and a mismatched config, and a tiny cross-attention model's (its config's class names
// and vocabulary decide the shape of context.tokens) with a vocabulary the weights do not fit.
//
// The input reaches load_checkpoint through its real, path-based entry point: a memfd opened as
// /proc/self/fd/N, so no disk is touched. The input's length picks EMA or live weights.
#include <sys/mman.h>
#include <unistd.h>

#include <string>

#include "models/train/trainer.h"
#include "tests/fuzz/fuzz_util.h"

using namespace diffuse;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const int fd = ::memfd_create("fuzz_checkpoint", MFD_CLOEXEC);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  FUZZ_CHECK(fd >= 0);
  FUZZ_CHECK(::ftruncate(fd, 0) == 0);
  FUZZ_CHECK(size == 0 || ::pwrite(fd, data, size, 0) == static_cast<ssize_t>(size));
  try {
    train::LoadedModel m = train::load_checkpoint(path, Device::cpu(), size % 2 == 0);
    FUZZ_CHECK(m.unet != nullptr);
  } catch (const Error&) {
  }
  return 0;
}
