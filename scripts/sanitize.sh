#!/usr/bin/env bash
# The sanitizer pass of CI, one clang build for two jobs: the tree compiled with AddressSanitizer,
# UndefinedBehaviorSanitizer (any UB report aborts) and libFuzzer's coverage instrumentation
# (DIFFUSE_FUZZ=ON), then
#   1. the cpu and emu tiers of the test folders in TEST_DIRS under ASan + UBSan (+ LeakSanitizer;
#      tools/ is not in the default: its tests run the CLI, which would be one more build of the
#      whole CLI, on the library code that models/ tests here and on the files that the fuzz
#      targets feed every reader; CI's 30 minutes do not hold both):
#      the emu tier runs every kernels/cuda kernel through kernels/simt, so an out-of-bounds access
#      of global memory inside a kernel (which the emulator alone does not see) fails here, as does
#      an overrun of a shared-memory array (padded with poisoned gaps in this build);
#      Test cases tagged [heavy] are left out here (DIFFUSE_TEST_EXCLUDE_TAG; the pass lists them):
#      the f64 gradchecks of whole networks, which evaluate the same few hundred ops thousands of
#      times, so that their first evaluation already shows the sanitizers everything they reach, and
#      which run 15x slower under ASan + UBSan (47 s -> about 700 s for the UNet's alone). The -O2
#      build of scripts/test.sh runs them whole;
#   2. every libFuzzer target (tests/fuzz) for FUZZ_SECONDS on its seed corpus (scripts/fuzz.sh).
# binutils' ar and ranlib (install-deps.sh installs them): clang alone would make CMake take LLVM's
# where a machine happens to have them, which install-deps.sh does not install (scripts/check-deps.sh).
# -O1 with line tables only: the sanitizers' usual optimisation level, and stack traces with file
# and line, at half the build time of -O2 -g. The CUDA backend and the benchmarks are left out to
# keep the build within CI's budget.
# Usage: scripts/sanitize.sh [build-dir]   (env: JOBS, TEST_DIRS, FUZZ_SECONDS (0: no fuzzing))
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-san}
dirs=${TEST_DIRS:-core;autograd;models;simt;kernels}
secs=${FUZZ_SECONDS:-10}
jobs=${JOBS:-$(nproc)}
start=$SECONDS
bash scripts/install-deps.sh --tests --fuzz
mkdir -p "$build"
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_AR=/usr/bin/ar -DCMAKE_RANLIB=/usr/bin/ranlib \
      "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -gline-tables-only" "-DCMAKE_C_FLAGS_RELEASE=-O1 -gline-tables-only" \
      -DDIFFUSE_FUZZ=ON -DDIFFUSE_CUDA=OFF -DDIFFUSE_BENCH=OFF -DDIFFUSE_TESTS=ON -DDIFFUSE_WERROR=ON \
      "-DDIFFUSE_TEST_DIRS=$dirs" -DDIFFUSE_TEST_EXCLUDE_TAG=heavy > "$build/sanitize-configure.log"
# Every default target but the CLI (`diffuse`), which only the tools tests run (test_tools depends
# on it, so a TEST_DIRS with tools still builds it).
mapfile -t targets < <(sed -n 's/^build all: phony //p' "$build/build.ninja" | tr ' ' '\n' | grep -v -x -e '' -e diffuse)
((${#targets[@]})) || { echo "sanitize.sh: no default targets found in $build/build.ninja" >&2; exit 1; }
cmake --build "$build" -j "$jobs" --target "${targets[@]}" > "$build/sanitize-build.log" 2>&1 ||
  { tail -n 60 "$build/sanitize-build.log"; echo "sanitize.sh: the sanitizer build failed" >&2; exit 1; }
echo "sanitize.sh: built in $((SECONDS - start)) s"
# halt_on_error: the first report fails the test; detect_leaks: LeakSanitizer too.
export ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
for exe in "$build"/test_*; do
  names=$("$exe" --list-test-names-only "[heavy]" 2>/dev/null | grep -v "^diffuse tests: seed" || true)
  if [[ -n $names ]]; then
    printf '%s\n' "$names" | sed "s|^|sanitize.sh: left out here, run whole by scripts/test.sh: $(basename "$exe"): |"
  fi
done
t0=$SECONDS
ctest --test-dir "$build" -L 'cpu|emu' --output-on-failure --output-junit ctest-junit.xml -j "$jobs"
echo "sanitize.sh: cpu and emu tiers clean under ASan + UBSan in $((SECONDS - t0)) s"
if ((secs > 0)); then
  t0=$SECONDS
  FUZZ_CONFIGURED=1 bash scripts/fuzz.sh "$secs" "$build"
  echo "sanitize.sh: every fuzz target ran ${secs} s on its corpus with no finding ($((SECONDS - t0)) s)"
fi
echo "sanitize.sh: done in $((SECONDS - start)) s"
