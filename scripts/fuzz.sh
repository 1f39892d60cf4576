#!/usr/bin/env bash
# Builds the libFuzzer targets (clang; ASan + UBSan; DIFFUSE_FUZZ=ON) and runs each one on its
# seed corpus, tests/corpus/<name>, for a while. New inputs the fuzzer finds go to a scratch
# folder, never into the committed corpus; a crash, a sanitizer report, a hang (over 10 s) or an
# allocation over 1 GiB stops the run with the input saved under the log folder.
# Usage: scripts/fuzz.sh [seconds-per-target] [build-dir]
#   env: TARGETS (e.g. "safetensors idx", default: every tests/fuzz/fuzz_*.cpp), LOGS (default
#        fuzz-logs), JOBS (build), RUNS (a number of executions per target instead of a time
#        limit), WORKERS (cores per target, default 1: more runs libFuzzer's fork mode),
#        PARALLEL (targets run at once, default: nproc / WORKERS)
# The long run (docs/reliability.md has its figures):
#   RUNS=10000000 TARGETS=idx bash scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
build=${2:-build-fuzz}
logs=${LOGS:-fuzz-logs}
if [[ -z "${TARGETS:-}" ]]; then
  TARGETS=$(cd tests/fuzz && ls fuzz_*.cpp | sed 's/^fuzz_//; s/\.cpp$//' | tr '\n' ' ')
fi
# FUZZ_CONFIGURED=1: the build folder is already configured with DIFFUSE_FUZZ=ON (scripts/sanitize.sh).
if [[ -z "${FUZZ_CONFIGURED:-}" ]]; then
  bash scripts/install-deps.sh --fuzz
  CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_AR=/usr/bin/ar -DCMAKE_RANLIB=/usr/bin/ranlib \
        "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -gline-tables-only" "-DCMAKE_C_FLAGS_RELEASE=-O1 -gline-tables-only" \
        -DDIFFUSE_FUZZ=ON -DDIFFUSE_TESTS=OFF -DDIFFUSE_BENCH=OFF -DDIFFUSE_CUDA=OFF -DDIFFUSE_WERROR=ON > /dev/null
fi
targets=()
for t in $TARGETS; do targets+=("fuzz_$t"); done
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target "${targets[@]}"
mkdir -p "$logs"
# One target: its run, then one summary line (or the findings); returns non-zero on a finding.
fuzz_one() {
  local t=$1 status=0
  scratch=$(mktemp -d)
  dict=()
  [[ -f tests/fuzz/$t.dict ]] && dict=(-dict="tests/fuzz/$t.dict")
  # One thread: the readers are serial, and libFuzzer measures coverage per input.
  workers=${WORKERS:-1}
  limit=(-max_total_time="$secs")
  [[ -n "${RUNS:-}" ]] && limit=(-runs="$RUNS")
  # WORKERS > 1: libFuzzer's fork mode, a parent that runs short-lived jobs on that many cores
  # and merges what they find. Short-lived matters for long runs: one process fuzzing for half an
  # hour slowed to a third of a fresh one's rate (ASan's allocator, measured on fuzz_checkpoint).
  fork=()
  # (Fork mode passes over timeouts and out-of-memory by default; here they stop the run.)
  (( workers > 1 )) && fork=(-fork="$workers" -ignore_timeouts=0 -ignore_ooms=0)
  t0=$SECONDS
  # malloc_context_size=0: no allocation stack per malloc (a third of the time of the
  # allocation-heavy readers); rerun a saved input with ASAN_OPTIONS= for the full report.
  if ASAN_OPTIONS=${ASAN_OPTIONS:-malloc_context_size=0} OMP_NUM_THREADS=1 "$build/fuzz/fuzz_$t" "${limit[@]}" \
       "${fork[@]}" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 \
       -artifact_prefix="$logs/$t-" "${dict[@]}" "$scratch" "tests/corpus/$t" > "$logs/$t.log" 2>&1; then
    if (( workers > 1 )); then
      runs=$(grep -E '^INFO: fuzzed for [0-9]+ iterations' "$logs/$t.log" | awk '{print $4}')
      # The parent's last status line: "#N: cov: C ft: F corp: ..."
      cov=$(grep -E '^#[0-9]+: cov:' "$logs/$t.log" | tail -n 1 | sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+).*/cov \1, ft \2/')
    else
      runs=$(grep -E '^stat::number_of_executed_units' "$logs/$t.log" | awk '{print $2}')
      # The last status line: "#N DONE cov: C ft: F corp: ..." (edges and features covered).
      cov=$(grep -E '^#[0-9]+' "$logs/$t.log" | tail -n 1 | sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+).*/cov \1, ft \2/')
    fi
    echo "fuzz_$t: ${runs:-?} runs in $((SECONDS - t0)) s on $workers core(s) ($cov), no findings"
  else
    echo "fuzz_$t: FOUND A PROBLEM (input and report under $logs/):"
    grep -E 'ERROR|SUMMARY|FUZZ_CHECK|runtime error|Test unit written|oom/timeout/crash: [0-9]+/[0-9]+/[1-9]' "$logs/$t.log" | head -10
    status=1
  fi
  rm -rf "$scratch"
  return $status
}
# PARALLEL targets at a time (default: the cores over WORKERS), each writing its summary to a file
# of its own, printed in order once all are done.
parallel=${PARALLEL:-$(( $(nproc) / ${WORKERS:-1} > 0 ? $(nproc) / ${WORKERS:-1} : 1 ))}
status=0
pids=()
for t in $TARGETS; do
  while (( $(jobs -rp | wc -l) >= parallel )); do wait -n || true; done
  fuzz_one "$t" > "$logs/$t.summary" 2>&1 &
  pids+=("$!")
done
i=0
for t in $TARGETS; do
  wait "${pids[$i]}" || status=1
  cat "$logs/$t.summary"
  i=$((i + 1))
done
exit $status
