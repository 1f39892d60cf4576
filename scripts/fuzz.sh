#!/usr/bin/env bash
# Builds the libFuzzer targets (clang; ASan + UBSan; DIFFUSE_FUZZ=ON) and runs each one on its
# seed corpus, tests/corpus/<name>, for a while. New inputs the fuzzer finds go to a scratch
# folder, never into the committed corpus; a crash, a sanitizer report, a hang (over 10 s) or an
# allocation over 1 GiB stops the run with the input saved under the log folder.
# Usage: scripts/fuzz.sh [seconds-per-target] [build-dir]
#   env: TARGETS (e.g. "safetensors idx", default: every tests/fuzz/fuzz_*.cpp), LOGS (default
#        fuzz-logs), JOBS (build), RUNS (a number of executions per target instead of a time
#        limit), WORKERS (fuzzing processes per target, default 1: they share the scratch corpus,
#        each picking up what the others found, and RUNS is split between them)
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
  CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -gline-tables-only" "-DCMAKE_C_FLAGS_RELEASE=-O1 -gline-tables-only" \
        -DDIFFUSE_FUZZ=ON -DDIFFUSE_TESTS=OFF -DDIFFUSE_BENCH=OFF -DDIFFUSE_CUDA=OFF -DDIFFUSE_WERROR=ON > /dev/null
fi
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
  workers=${WORKERS:-1}
  limit=(-max_total_time="$secs")
  [[ -n "${RUNS:-}" ]] && limit=(-runs="$(( (RUNS + workers - 1) / workers ))")
  t0=$SECONDS
  pids=()
  for ((w = 0; w < workers; ++w)); do
    log="$logs/$t.log"
    (( workers > 1 )) && log="$logs/$t.$w.log"
    # malloc_context_size=0: no allocation stack per malloc (a third of the time of the
    # allocation-heavy readers); rerun a saved input without it for the full report.
    ASAN_OPTIONS=${ASAN_OPTIONS:-malloc_context_size=0} OMP_NUM_THREADS=1 "$build/fuzz/fuzz_$t" "${limit[@]}" \
      -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 -artifact_prefix="$logs/$t-" \
      "${dict[@]}" "$scratch" "tests/corpus/$t" > "$log" 2>&1 &
    pids+=($!)
  done
  # The first process to stop on a finding stops the others.
  ok=1
  for ((w = 0; w < workers; ++w)); do
    if ! wait -n; then
      ok=0
      kill "${pids[@]}" 2> /dev/null || true
    fi
  done
  logfiles=("$logs/$t.log")
  (( workers > 1 )) && logfiles=("$logs/$t".[0-9]*.log)
  if (( ok )); then
    runs=$(cat "${logfiles[@]}" | grep -E '^stat::number_of_executed_units' | awk '{s += $2} END {print s}')
    # The last status line of each: "#N DONE cov: C ft: F corp: ..." (edges and features covered).
    cov=$(for f in "${logfiles[@]}"; do grep -E '^#[0-9]+' "$f" | tail -n 1; done |
          sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+).*/cov \1, ft \2/' | sort -t' ' -k2,2n | tail -n 1)
    echo "fuzz_$t: $runs runs in $((SECONDS - t0)) s with $workers process(es) ($cov), no findings"
  else
    echo "fuzz_$t: FOUND A PROBLEM (input and report under $logs/):"
    cat "${logfiles[@]}" | grep -E 'ERROR|SUMMARY|FUZZ_CHECK|runtime error|Test unit written' | head -10
    status=1
  fi
  rm -rf "$scratch"
done
exit $status
