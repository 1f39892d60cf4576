// The test runner. Tiers are Catch2 tags; `[cuda]` exits 77 (ctest: skipped) without a GPU.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <string>

#include "core/device.h"
#include "tests/test_util.h"

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]).find("[cuda]") != std::string::npos && !diffuse::cuda_available()) {
      std::printf("cuda tier skipped: %s\n", diffuse::cuda_unavailable_reason().c_str());
      return 77;
    }
  }
  std::printf("diffuse tests: seed %llu (set DIFFUSE_TEST_SEED to repeat)\n",
              static_cast<unsigned long long>(diffuse::test::run_seed()));
  return Catch::Session().run(argc, argv);
}
