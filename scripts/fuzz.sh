#!/usr/bin/env bash
# Builds the libFuzzer targets (clang; ASan + UBSan; DIFFUSE_FUZZ=ON) and runs each one on its
# seed corpus, tests/corpus/<name>, for a while. New inputs the fuzzer finds go to a scratch
# folder, never into the committed corpus; a crash, a sanitizer report, a hang (over 10 s) or an
# allocation over 1 GiB stops the run with the input saved under the log folder.
# Usage: scripts/fuzz.sh [seconds-per-target] [build-dir]
#   env: TARGETS (e.g. "safetensors idx", default: every tests/fuzz/fuzz_*.cpp), LOGS (default
#        fuzz-logs), JOBS
# A long run of one target (docs/reliability.md has the figures of the last one):
#   nice build-fuzz/fuzz/fuzz_idx -runs=10000000 -dict=tests/fuzz/idx.dict /tmp/idx tests/corpus/idx
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
build=${2:-build-fuzz}
logs=${LOGS:-fuzz-logs}
bash scripts/install-deps.sh --fuzz
if [[ -z "${TARGETS:-}" ]]; then
  TARGETS=$(cd tests/fuzz && ls fuzz_*.cpp | sed 's/^fuzz_//; s/\.cpp$//' | tr '\n' ' ')
fi
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDIFFUSE_FUZZ=ON \
      -DDIFFUSE_TESTS=OFF -DDIFFUSE_BENCH=OFF -DDIFFUSE_CUDA=OFF -DDIFFUSE_WERROR=ON > /dev/null
targets=()
for t in $TARGETS; do targets+=("fuzz_$t"); done
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target "${targets[@]}"
mkdir -p "$logs"
status=0
for t in $TARGETS; do
  scratch=$(mktemp -d)
  dict=()
  [[ -f tests/fuzz/$t.dict ]] && dict=(-dict="tests/fuzz/$t.dict")
  # One thread: the readers are serial, and libFuzzer measures coverage per input.
  if OMP_NUM_THREADS=1 "$build/fuzz/fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
       -malloc_limit_mb=1024 -print_final_stats=1 -artifact_prefix="$logs/$t-" "${dict[@]}" \
       "$scratch" "tests/corpus/$t" > "$logs/$t.log" 2>&1; then
    echo "fuzz_$t: $(grep -E '^stat::number_of_executed_units' "$logs/$t.log" | awk '{print $2}') runs in ${secs} s, no findings"
  else
    echo "fuzz_$t: FOUND A PROBLEM (input and report under $logs/):"
    grep -E 'ERROR|SUMMARY|FUZZ_CHECK|runtime error|Test unit written' "$logs/$t.log" | head -10
    status=1
  fi
  rm -rf "$scratch"
done
exit $status
