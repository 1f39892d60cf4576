// `diffuse info`: version, build options, CUDA runtime and driver, devices; or what a checkpoint holds.
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "build_config.h"
#include "core/allocator.h"
#include "core/check.h"
#include "core/device.h"
#include "core/safetensors.h"
#include "tools/commands.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace diffuse::tools {

// The metadata a checkpoint carries, and how many numbers each part of it holds (the part is the
// first component of a tensor's name: model, ema, opt, autoencoder, ...).
static void print_checkpoint(const std::string& path) {
  const SafeTensors st = read_safetensors(path);
  auto meta = [&](const char* key) -> std::string {
    auto it = st.metadata.find(key);
    return it == st.metadata.end() ? std::string() : it->second;
  };
  DF_CHECK(!meta("format").empty(), path, " is not a diffuse checkpoint (no 'format' in its metadata)");
  std::printf("%s: %s, step %s\n", path.c_str(), meta("format").c_str(), meta("step").c_str());
  for (const char* key : {"unet", "autoencoder", "latent_scale", "num_classes", "config"}) {
    const std::string v = meta(key);
    if (!v.empty()) std::printf("%s: %s\n", key, v.c_str());
  }
  std::map<std::string, int64_t> parts;
  for (const auto& [name, t] : st.tensors) parts[name.substr(0, name.find('.'))] += t.numel();
  for (const auto& [part, n] : parts) std::printf("tensors %s.*: %lld numbers\n", part.c_str(), static_cast<long long>(n));
}

static void print_version(int v) {
  if (v == 0) std::printf("none");
  else std::printf("%d.%d", v / 1000, (v % 1000) / 10);
}

void register_info(CLI::App& root) {
  CLI::App* cmd = root.add_subcommand("info", "Print the version, the build options and the devices found; with a "
                                      "checkpoint, what it holds instead");
  auto checkpoint = std::make_shared<std::string>();
  cmd->add_option("checkpoint", *checkpoint, "a checkpoint of `diffuse train`, `train-classifier` or "
                  "`train-autoencoder`: print its format, step, configs (a latent model's autoencoder and scale "
                  "factor among them) and parameter count");
  cmd->callback([checkpoint] {
    if (!checkpoint->empty()) {
      print_checkpoint(*checkpoint);
      return;
    }
    std::printf("diffuse %s (%s, %s)\n", DIFFUSE_VERSION, DIFFUSE_BUILD_TYPE, DIFFUSE_CXX_COMPILER);
    std::printf("build: cuda=%s (architectures: %s) onednn=%s openblas=%s emulator=%s sanitizers=%s\n",
                DIFFUSE_BUILD_CUDA, DIFFUSE_CUDA_ARCHITECTURES[0] ? DIFFUSE_CUDA_ARCHITECTURES : "-",
                DIFFUSE_BUILD_DNNL, DIFFUSE_BUILD_OPENBLAS, DIFFUSE_BUILD_SIMT, DIFFUSE_BUILD_SANITIZE);
#if defined(_OPENMP)
    std::printf("cpu: %d OpenMP threads\n", omp_get_max_threads());
#else
    std::printf("cpu: 1 thread (built without OpenMP)\n");
#endif
    std::printf("cuda runtime: ");
    print_version(cuda_runtime_version());
    std::printf(", driver: ");
    print_version(cuda_driver_version());
    std::printf("\n");
    auto devices = cuda_devices();
    if (devices.empty()) {
      std::printf("devices: cpu only (%s)\n", cuda_unavailable_reason().c_str());
    } else {
      for (const auto& d : devices)
        std::printf("cuda:%d  %s  sm_%d%d  %d SMs  %.1f GiB total, %.1f GiB free\n", d.index, d.name.c_str(),
                    d.cc_major, d.cc_minor, d.sm_count, d.total_bytes / 1073741824.0, d.free_bytes / 1073741824.0);
    }
  });
}

}  // namespace diffuse::tools
