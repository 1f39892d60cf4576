#!/usr/bin/env bash
# The GPU machine's one call: settles the CUDA path of this tree within 8 minutes on one H100 with
# 16 cores, PyTorch installed, no network and no package manager.
#
#   scripts/gpu-check.sh OUTDIR          (docs/benchmarks.md gives the exact device call)
#
# Stages, each under a time limit, in order of what settles most:
#   1. build: Release, sm_90 only, no sanitizers, no Boost (the emulator is a CPU tool), headers
#      of the header-only packages from third_party/ (scripts/fetch-third-party.sh, carried along);
#   2. the whole cuda tier (ctest -L cuda);
#   3. compute-sanitizer memcheck on every test binary's [cuda] tests, racecheck on the kernels'
#      (the shared-memory kernels), a time limit per binary; the deliberate out-of-memory test is
#      left out (it fills the device on purpose);
#   4. bench/kernels.sh and bench/e2e.sh: diffuse beside PyTorch (eager and torch.compile) with
#      iteration counts that fit.
# OUTDIR gets three files: gpu-check.log (everything printed), gpu-check.json (every figure and
# every result) and gpu-check-details.tar.gz (the per-stage logs and the benchmarks' own JSON).
# Without a GPU it builds, runs the cuda tier (which reports itself skipped), says what it could
# not check, and exits 2: a rehearsal, not a pass.
# Environment: BUILD (default build-gpu), JOBS (default nproc), BUDGET (seconds for the whole run,
# default 480), PYTHON (an interpreter with torch, default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/gpu-check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
build=${BUILD:-build-gpu}
jobs=${JOBS:-$(nproc)}
budget=${BUDGET:-480}
python=${PYTHON:-python3}
details=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
log=$out/gpu-check.log
results=$details/results.tsv   # stage <tab> name <tab> status <tab> seconds <tab> note
: > "$results"
exec > >(tee "$log") 2>&1
start=$SECONDS
left() { echo $((budget - (SECONDS - start))); }
say() { printf '[gpu-check %4ds] %s\n' $((SECONDS - start)) "$*"; }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >> "$results"; }
# run_limited SECONDS LOGFILE CMD...: the command under `timeout`; prints its status word.
run_limited() {
  local secs=$1 logf=$2; shift 2
  if ((secs < 5)); then echo "not-run"; return; fi
  timeout --kill-after=10 "$secs" "$@" > "$logf" 2>&1
  local rc=$?
  if ((rc == 124 || rc == 137)); then echo "timed-out"; elif ((rc == 0)); then echo "pass";
  elif ((rc == 77)); then echo "skipped"; else echo "fail($rc)"; fi
}

say "tree $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)') on $(hostname), $jobs jobs, budget ${budget} s"
gpu=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L > "$details/nvidia-smi-L.txt" 2>&1 && grep -q '^GPU' "$details/nvidia-smi-L.txt"; then
  gpu=1
  nvidia-smi > "$details/nvidia-smi.txt" 2>&1
  say "$(head -n 1 "$details/nvidia-smi-L.txt")"
else
  say "no GPU answers here: this run is a rehearsal (build and cuda tier only)"
fi

# ---- 1. build ----------------------------------------------------------------------------------
t0=$SECONDS
status=$(run_limited $(($(left) - 120)) "$details/configure.log" \
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFUSE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DDIFFUSE_WERROR=ON -DDIFFUSE_SANITIZE=OFF -DDIFFUSE_TESTS=ON -DDIFFUSE_BENCH=ON \
        -DCMAKE_DISABLE_FIND_PACKAGE_Boost=ON -DDIFFUSE_THIRD_PARTY_DIR="$PWD/third_party")
if [[ $status == pass ]]; then
  status=$(run_limited $(($(left) - 120)) "$details/build.log" cmake --build "$build" -j "$jobs")
fi
record build all "$status" $((SECONDS - t0))
built=0
[[ $status == pass ]] && built=1
say "build: $status in $((SECONDS - t0)) s"
if [[ $status != pass ]]; then
  grep -E 'error|Error|FAILED' "$details/configure.log" "$details/build.log" 2>/dev/null | head -n 40
fi
find "$build" -name '*.ptxas.txt' -exec grep -hE 'spill|lmem' {} + 2>/dev/null | grep -v ' 0 bytes spill' \
  > "$details/spills.txt" || true

# ---- 2. the cuda tier --------------------------------------------------------------------------
if ((built)); then
  t0=$SECONDS
  # One at a time: the tests share one device, and one of them fills its memory on purpose.
  status=$(run_limited $(($(left) - 60)) "$details/ctest-cuda.log" \
    ctest --test-dir "$build" -L cuda --output-on-failure --timeout 300 --output-junit "$details/ctest-cuda.xml")
  record cuda-tier ctest "$status" $((SECONDS - t0))
  say "cuda tier: $status in $((SECONDS - t0)) s"
  grep -E 'Test +#|tests passed|Skipped|Failed' "$details/ctest-cuda.log"
fi

# ---- 3. compute-sanitizer ----------------------------------------------------------------------
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if ((gpu && built)); then
  # Catch2 test spec: the [cuda] tests without the out-of-memory one (it fills the device).
  spec='[cuda]~"*out of memory*"'
  for exe in "$build"/test_*; do
    [[ -x $exe ]] || continue
    name=$(basename "$exe")
    tools=(memcheck)
    [[ $name == test_kernels ]] && tools+=(racecheck)
    for tool in "${tools[@]}"; do
      t0=$SECONDS
      per=$(( $(left) < 240 ? $(left) / 4 : 60 ))
      [[ $tool == racecheck ]] && per=$(( per * 2 ))
      tspec=$spec
      # racecheck: the project's own shared-memory kernels, not the cuBLASLt / cuDNN comparisons
      # (their libraries' kernels are not ours to race-check, and they are slow under it).
      [[ $tool == racecheck ]] && tspec='[cuda]~"gemm:*"~"conv2d:*"~"matmul and linear:*"~"attention: the materialised*"'
      st=$(run_limited "$per" "$details/sanitizer-$tool-$name.log" \
        "$sanitizer" --tool "$tool" --error-exitcode 3 --print-limit 20 "$exe" "$tspec")
      errors=$(grep -cE '^========= (Invalid|Race|Error|.*hazard)' "$details/sanitizer-$tool-$name.log" || true)
      record "sanitizer-$tool" "$name" "$st" $((SECONDS - t0)) "$errors reports"
      say "compute-sanitizer $tool $name: $st ($errors reports, $((SECONDS - t0)) s)"
    done
  done
fi

# ---- 4. benchmarks beside PyTorch -----------------------------------------------------------------
if ((gpu && built)); then
  t0=$SECONDS
  st=$(run_limited $(( $(left) / 3 )) "$details/bench-kernels.log" \
    env BUILD="$build" PYTHON="$python" OUT="$details/kernels" ITERS=20 WARMUP=5 bash bench/kernels.sh)
  record bench kernels "$st" $((SECONDS - t0))
  say "bench/kernels.sh: $st in $((SECONDS - t0)) s"
fi
if ((gpu && built)); then
  t0=$SECONDS
  # One preset, few iterations: torch.compile's first calls dominate this stage.
  st=$(run_limited $(( $(left) - 10 )) "$details/bench-e2e.log" \
    env BUILD="$build" PYTHON="$python" OUT="$details/e2e" PRESETS=ddpm-cifar10 ITERS=10 SAMPLE_STEPS=10 \
        bash bench/e2e.sh)
  record bench e2e "$st" $((SECONDS - t0))
  say "bench/e2e.sh: $st in $((SECONDS - t0)) s"
fi

# ---- the figures and the verdict -----------------------------------------------------------------
cp "$log" "$details/gpu-check.log" 2>/dev/null
python_for_json=$(command -v "$python" || command -v python3 || echo /usr/bin/python3)
"$python_for_json" - "$details" "$out/gpu-check.json" "$gpu" "$((SECONDS - start))" <<'PY'
import csv, json, os, subprocess, sys, time
details, dest, gpu, seconds = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
def load(p):
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return None
rows = [r for r in csv.reader(open(os.path.join(details, "results.tsv")), delimiter="\t")]
def rev():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""
smi = os.path.join(details, "nvidia-smi-L.txt")
doc = {
    "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    "commit": rev(),
    "gpu": open(smi).read().strip() if gpu and os.path.exists(smi) else None,
    "seconds": seconds,
    "results": [{"stage": r[0], "name": r[1], "status": r[2], "seconds": int(r[3]), "note": r[4]} for r in rows],
    "bench_kernels": {"diffuse": load(os.path.join(details, "kernels", "diffuse.json")),
                      "torch": load(os.path.join(details, "kernels", "torch.json"))},
    "bench_e2e": {"diffuse": load(os.path.join(details, "e2e", "diffuse.json")),
                  "torch": load(os.path.join(details, "e2e", "torch.json"))},
}
json.dump(doc, open(dest, "w"), indent=1)
PY
tar -czf "$out/gpu-check-details.tar.gz" -C "$details" . 2>/dev/null
bad=$(awk -F'\t' '$3 != "pass" {print $1 " " $2 ": " $3}' "$results" 2>/dev/null)
rm -rf "$details"
say "files: $out/gpu-check.log, gpu-check.json, gpu-check-details.tar.gz"
if ((gpu == 0)); then
  say "REHEARSAL: no GPU, so the cuda tier, compute-sanitizer and the benchmarks were not checked"
  exit 2
fi
if [[ -n $bad ]]; then
  say "NOT SETTLED:"; echo "$bad"
  exit 1
fi
say "every stage passed"
