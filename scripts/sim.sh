#!/usr/bin/env bash
# The simulated-device pass of CI (docs/kernels.md, "The simulated device"): diffuse built with
# DIFFUSE_CUDA=SIM, so that the host code that drives a GPU (the CUDA runtime, cuBLASLt and cuDNN
# calls, streams, events, graph capture, the device training step and sampling loop) runs
# against sim/ instead of a GPU, then
#   1. the `sim` tier: every [cuda] test of the folders below against the simulated device,
#      including the CLI's `train --device cuda` and `sample --device cuda` against the cpu;
#   2. tests/sim: the simulation's own checks (planted bugs it must catch, and what it must not
#      mistake for one);
#   3. bench/e2e --once (ctest's bench.e2e.sim): every case of the end-to-end benchmark once, on the
#      tiny preset, as a correctness run (its timings mean nothing here).
#   4. bench/kernels --once (bench.kernels.sim): every case of the kernel benchmark once, at small
#      shapes, as a correctness run.
# Needs the CUDA toolkit's headers (cuda_runtime_api.h, cublasLt.h, cudnn.h), not its compiler,
# libraries or a GPU. gcc, Release, warnings as errors. Only the test files with [cuda] tests (of
# the folders that have them; DIFFUSE_TEST_ONLY_TAG), the CLI, bench/e2e and bench/kernels are built. CI
# (.ci/run) runs it beside scripts/test.sh's build with ccache, which hands this build every
# object the two compile alike (most of the library and the CLI).
# Usage: scripts/sim.sh BUILD_DIR   (env: JOBS)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: scripts/sim.sh BUILD_DIR}
jobs=${JOBS:-$(nproc)}
dirs="core;kernels;models;diffusion;tools"
start=$SECONDS
bash scripts/install-deps.sh --tests
mkdir -p "$build"
CC=gcc CXX=g++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFUSE_CUDA=SIM -DDIFFUSE_WERROR=ON \
      -DDIFFUSE_TESTS=ON -DDIFFUSE_BENCH=ON "-DDIFFUSE_TEST_DIRS=$dirs" -DDIFFUSE_TEST_ONLY_TAG=cuda > "$build/sim-configure.log" 2>&1 ||
  { tail -n 20 "$build/sim-configure.log"; echo "sim.sh: configuring DIFFUSE_CUDA=SIM failed" >&2; exit 1; }
targets=(diffuse_cli test_sim e2e kernels)
IFS=';' read -ra list <<< "$dirs"
for d in "${list[@]}"; do targets+=("test_$d"); done
cmake --build "$build" -j "$jobs" --target "${targets[@]}" > "$build/sim-build.log" 2>&1 ||
  { tail -n 60 "$build/sim-build.log"; echo "sim.sh: the DIFFUSE_CUDA=SIM build failed" >&2; exit 1; }
echo "sim.sh: built in $((SECONDS - start)) s"
t0=$SECONDS
# The tests are single-threaded (the emulator runs a kernel's threads as fibers on one core), so
# ctest runs as many at once as there are cores.
ctest --test-dir "$build" -L sim --output-on-failure --output-junit ctest-junit.xml -j "$jobs"
echo "sim.sh: the sim tier passed in $((SECONDS - t0)) s"
echo "sim.sh: done in $((SECONDS - start)) s"
