#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build with CUDA, run every tier (cpu, emu, cuda), then the
# cuda tier under compute-sanitizer's memcheck and racecheck. Third-party headers come from
# third_party/ when the machine has no package access (scripts/fetch-third-party.sh).
# Usage: scripts/gpu-check.sh [build-dir]     Output: logs under $OUT (or ./gpu-check-logs).
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
logs=${OUT:-gpu-check-logs}
mkdir -p "$logs"
nvidia-smi > "$logs/nvidia-smi.txt" 2>&1
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFUSE_CUDA=ON -DDIFFUSE_WERROR=ON \
      -DDIFFUSE_THIRD_PARTY_DIR="$PWD/third_party" > "$logs/configure.txt" 2>&1 || { tail -30 "$logs/configure.txt"; exit 1; }
cmake --build "$build" -j "$(nproc)" > "$logs/build.txt" 2>&1 || { grep -E 'error|warning' "$logs/build.txt" | head -40; exit 1; }
grep -E 'spill|lmem' "$logs/build.txt" | grep -v ' 0 bytes spill' > "$logs/spills.txt"
status=0
ctest --test-dir "$build" -L 'cpu|emu|cuda' --output-on-failure -j 8 > "$logs/ctest.txt" 2>&1 || status=1
tail -15 "$logs/ctest.txt"
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for exe in "$build"/test_*; do
  for tool in memcheck racecheck; do
    "$sanitizer" --tool "$tool" --error-exitcode 3 "$exe" "[cuda]" > "$logs/sanitizer-$tool-$(basename "$exe").txt" 2>&1
    rc=$?
    if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then echo "compute-sanitizer $tool failed on $exe (rc $rc)"; status=1; fi
  done
done
exit $status
