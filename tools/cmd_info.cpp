// `diffuse info`: version, build options, CUDA runtime and driver, devices.
#include <cstdio>

#include "build_config.h"
#include "core/allocator.h"
#include "core/device.h"
#include "tools/commands.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace diffuse::tools {

static void print_version(int v) {
  if (v == 0) std::printf("none");
  else std::printf("%d.%d", v / 1000, (v % 1000) / 10);
}

void register_info(CLI::App& root) {
  CLI::App* cmd = root.add_subcommand("info", "Print the version, the build options and the devices found");
  cmd->callback([] {
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
