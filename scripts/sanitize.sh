#!/usr/bin/env bash
# The sanitizer pass of CI: AddressSanitizer and UndefinedBehaviorSanitizer (DIFFUSE_SANITIZE=ON,
# any UB report aborts) over the test folders that hold the file readers, the tensors, autograd
# and the trainer, then their cpu tier. The CUDA backend and the benchmarks are left out to keep
# the build within CI's budget; the emu tier under ASan is the command in docs/reliability.md.
# Usage: scripts/sanitize.sh [build-dir]   (env: JOBS, TEST_DIRS)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-asan}
dirs=${TEST_DIRS:-core;autograd;models;tools}
start=$SECONDS
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDIFFUSE_SANITIZE=ON -DDIFFUSE_CUDA=OFF \
      -DDIFFUSE_BENCH=OFF -DDIFFUSE_TESTS=ON -DDIFFUSE_WERROR=ON "-DDIFFUSE_TEST_DIRS=$dirs" > /dev/null
cmake --build "$build" -j "${JOBS:-$(nproc)}" > "$build/sanitize-build.log" 2>&1 ||
  { tail -n 60 "$build/sanitize-build.log"; echo "sanitize.sh: the sanitizer build failed" >&2; exit 1; }
echo "sanitize.sh: built in $((SECONDS - start)) s"
# halt_on_error: the first report fails the test; detect_leaks: LeakSanitizer too.
export ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
ctest --test-dir "$build" -L cpu --output-on-failure -j "${JOBS:-$(nproc)}"
echo "sanitize.sh: cpu tier clean under ASan + UBSan ($((SECONDS - start)) s in all)"
