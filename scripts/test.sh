#!/usr/bin/env bash
# Installs the dependencies, builds, and runs the cpu and emu tiers (and cuda where a GPU
# answers; without one those tests report themselves skipped).
# Usage: scripts/test.sh [build-dir]   (env: DIFFUSE_CUDA=AUTO|ON|OFF, JOBS)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bash scripts/install-deps.sh --tests
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFUSE_WERROR=ON -DDIFFUSE_TESTS=ON -DDIFFUSE_BENCH=ON \
      -DDIFFUSE_CUDA="${DIFFUSE_CUDA:-AUTO}"
t0=$SECONDS
cmake --build "$build" -j "${JOBS:-$(nproc)}"
echo "test.sh: built in $((SECONDS - t0)) s"
t0=$SECONDS
ctest --test-dir "$build" -L 'cpu|emu|cuda' --output-on-failure --output-junit ctest-junit.xml -j "${JOBS:-$(nproc)}"
echo "test.sh: the cpu, emu and cuda tiers passed in $((SECONDS - t0)) s"
