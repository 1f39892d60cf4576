#!/usr/bin/env bash
# bench/compare_cpu.sh: diffuse against PyTorch on the CPU, in one run. The `tiny` UNet (280,177
# parameters) trained at batch 64 on 28x28x1 images and sampled with DDIM (50 steps, batch 256),
# by bench/cpu_train_step and by bench/torch_cpu_tiny.py (the same model in PyTorch; it fails if
# the parameter counts differ), with the same steps and threads. Two PyTorches: Debian's
# python3-torch (1.13) and the newest from PyPI (torch 2.15.0, installed by bench/torch_pypi.sh
# into $BUILD_DIR/torch-pypi on first use), the latter in three modes: NCHW eager, channels-last
# eager and torch.compile. Each program runs REPEATS times, interleaved (diffuse, each PyTorch,
# diffuse, ...), each run a process of its own, so that a load that comes and goes on a shared
# machine falls on every side alike. Prints, per figure, the median and the spread (min-max) of
# each side, diffuse against Debian's PyTorch and against the best PyTorch 2.15 mode (the best
# median for that figure), the ratios and the targets they are held to (docs/benchmarks.md
# records a run), with the date, the machine and the load before each run.
#
#   bash bench/compare_cpu.sh                 # from a clean clone, as root (installs packages)
#   STEPS=40 THREADS=1 bash bench/compare_cpu.sh
#   PROFILE=1 SKIP_DEPS=1 bash bench/compare_cpu.sh   # also the per-op profiles, both sides
#
# Knobs: STEPS (timed training steps after 3 warm-up steps, 20), THREADS (OpenMP threads for
# diffuse, torch.set_num_threads for PyTorch; nproc), SAMPLE_BATCH (256), SAMPLE_STEPS (50),
# REPEATS (3), TORCH_PYPI (1; 0 leaves PyTorch 2.15 out), MODES (the 2.15 modes, "eager
# channels-last compile"), PROFILE (1: after the timed runs, one profiled run each of diffuse and
# of PyTorch 2.15 eager, tables in $BUILD_DIR/compare/profile-*.txt), BUILD_DIR (build-compare),
# JOBS (build jobs; nproc), SKIP_DEPS=1 (do not run install-deps.sh), NICE (a niceness for every
# timed process of both sides, e.g. -19 as root on a machine that other work shares: the timed
# programs then take the cores first, and a descheduled thread no longer stalls every barrier;
# with the kernel's autogroup scheduling on, niceness only orders processes of one session, so the
# script says so: `echo 0 > /proc/sys/kernel/sched_autogroup_enabled` as root turns it off).
# With REPEATS=1 TORCH_PYPI=0 this is the one-run Debian comparison of before, which took 155 s
# on 2 cores from a clean clone, about half of it the build (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-20}
THREADS=${THREADS:-$(nproc)}
SAMPLE_BATCH=${SAMPLE_BATCH:-256}
SAMPLE_STEPS=${SAMPLE_STEPS:-50}
REPEATS=${REPEATS:-3}
TORCH_PYPI=${TORCH_PYPI:-1}
MODES=${MODES:-eager channels-last compile}
PROFILE=${PROFILE:-0}
BUILD_DIR=${BUILD_DIR:-build-compare}
JOBS=${JOBS:-$(nproc)}
OUT="$BUILD_DIR/compare"
PYPI_DIR="$BUILD_DIR/torch-pypi"

if [[ "${SKIP_DEPS:-0}" != 1 ]]; then
  bash scripts/install-deps.sh --bench
fi

if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  cmake -S . -B "$BUILD_DIR" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DDIFFUSE_CUDA=OFF -DDIFFUSE_TESTS=OFF >/dev/null
fi
echo "compare_cpu: building cpu_train_step in $BUILD_DIR"
cmake --build "$BUILD_DIR" --target cpu_train_step -j "$JOBS" >"$BUILD_DIR/compare-build.log" 2>&1 ||
  { tail -30 "$BUILD_DIR/compare-build.log"; exit 1; }
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT/runs.txt" "$OUT"/profile-*.txt
if [[ "$TORCH_PYPI" == 1 ]]; then
  bash bench/torch_pypi.sh "$PYPI_DIR"  # installs once; a clear error and exit if it cannot
fi

load() { cut -d' ' -f1-3 /proc/loadavg; }
prio=()
if [[ -n "${NICE:-}" ]]; then
  prio=(nice -n "$NICE")
  if [[ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)" == 1 ]]; then
    echo "compare_cpu: NICE=$NICE holds only against this session's processes while autogroup scheduling is on" \
      "(echo 0 > /proc/sys/kernel/sched_autogroup_enabled, as root, turns it off)" >&2
  fi
fi
# One PyTorch configuration: "debian" (eager NCHW) or "pypi-MODE"; extra arguments go to the script.
torch_run() {
  local conf=$1 json=$2
  shift 2
  local args=(--batch 64 --steps "$STEPS" --sample-batch "$SAMPLE_BATCH" --sample-steps "$SAMPLE_STEPS"
    --threads "$THREADS" --lr 2e-4 --diffuse-json "$OUT/diffuse.1.json" --json "$json" "$@")
  if [[ "$conf" == debian ]]; then
    OMP_NUM_THREADS="$THREADS" "${prio[@]}" /usr/bin/python3 bench/torch_cpu_tiny.py "${args[@]}"
  else
    OMP_NUM_THREADS="$THREADS" "${prio[@]}" bash bench/torch_pypi.sh "$PYPI_DIR" -- python3 bench/torch_cpu_tiny.py \
      --mode "${conf#pypi-}" "${args[@]}"
  fi
}
confs=(debian)
if [[ "$TORCH_PYPI" == 1 ]]; then
  for m in $MODES; do confs+=("pypi-$m"); done
fi

echo "compare_cpu: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p' | head -1))," \
  "$THREADS threads, $STEPS timed steps, $REPEATS rounds of: diffuse ${confs[*]}${NICE:+, at nice $NICE}"
for ((r = 1; r <= REPEATS; ++r)); do
  echo "== round $r: diffuse (load $(load))"
  echo "$r diffuse $(load)" >>"$OUT/runs.txt"
  "${prio[@]}" "$BUILD_DIR/bench/cpu_train_step" --preset tiny --batch 64 --steps "$STEPS" --sample-batch "$SAMPLE_BATCH" \
    --sample-steps "$SAMPLE_STEPS" --threads "$THREADS" --lr 2e-4 --json "$OUT/diffuse.$r.json"
  for c in "${confs[@]}"; do
    echo "== round $r: PyTorch $c (load $(load))"
    echo "$r $c $(load)" >>"$OUT/runs.txt"
    # PyTorch 2.15's profiler hooks and inductor print warnings of no consequence here.
    torch_run "$c" "$OUT/torch.$c.$r.json" 2>&1 | { grep -v '^USDT:\|^[WI][0-9]\{4\} ' || true; }
    [[ -f "$OUT/torch.$c.$r.json" ]] || { echo "compare_cpu: PyTorch $c failed" >&2; exit 1; }
  done
done
echo "compare_cpu: load after: $(load)"
if [[ "$PROFILE" == 1 ]]; then
  echo "== profiles (one training step, one sampling model call)"
  "${prio[@]}" "$BUILD_DIR/bench/cpu_train_step" --preset tiny --batch 64 --steps 3 --sample-batch "$SAMPLE_BATCH" \
    --sample-steps 1 --threads "$THREADS" --profile "$OUT/profile-diffuse.txt" >/dev/null
  if [[ "$TORCH_PYPI" == 1 ]]; then
    torch_run pypi-eager "$OUT/torch.profile.json" --steps 3 --sample-steps 1 --profile "$OUT/profile-torch.txt" \
      >/dev/null 2>&1
  fi
  echo "compare_cpu: profiles in $OUT/profile-*.txt (load after: $(load))"
fi
echo

/usr/bin/python3 - "$OUT" "$REPEATS" "${confs[@]}" <<'EOF'
import json, statistics, sys
out, repeats, confs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def runs(name):
    return [json.load(open(f"{out}/{name}.{r}.json")) for r in range(1, repeats + 1)]
d = runs("diffuse")
t = {c: runs(f"torch.{c}") for c in confs}
# (label, key, True when higher is better)
figs = [("training images/s", "train_images_per_s", True),
        ("sampling images/s", "sample_images_per_s", True),
        ("peak RSS (MiB)", "peak_rss_mib", False)]
med = lambda rs, k: statistics.median(x[k] for x in rs)
def cell(rs, k):
    v = [x[k] for x in rs]
    return f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})"
d0 = d[0]
print(f"tiny UNet ({d0['parameters']:,} parameters), {d0['threads']} threads, batch {d0['batch']}, "
      f"{d0['steps']} timed steps; DDIM {d0['sample_steps']} steps at batch {d0['sample_batch']}; "
      f"{repeats} interleaved rounds, median (min-max)")
print()
name = {c: t[c][0]["framework"].split()[-1] + ("" if c == "debian" else " " + c[len("pypi-"):]) for c in confs}
print("| metric | diffuse | " + " | ".join(f"PyTorch {name[c]}" for c in confs) + " |")
print("| --- | ---: | " + " | ".join("---:" for _ in confs) + " |")
for label, key in [("training ms/step", "train_ms_per_step")] + [(l, k) for l, k, _ in figs]:
    print(f"| {label} | {cell(d, key)} | " + " | ".join(cell(t[c], key) for c in confs) + " |")
print()
# Targets: against Debian's 1.13 as before; against the newest PyTorch at its best mode per figure.
targets = {"debian": {"train_images_per_s": 1.0, "sample_images_per_s": 1.2, "peak_rss_mib": 1.0},
           "pypi": {"train_images_per_s": 1.2, "sample_images_per_s": 1.3, "peak_rss_mib": 1.0}}
print("| metric | against | diffuse / PyTorch (medians) | per round (min-max) | target | met |")
print("| --- | --- | ---: | ---: | --- | --- |")
missed = total = 0
pypi = [c for c in confs if c.startswith("pypi-")]
for label, key, higher in figs:
    sides = [("debian", "debian")] if "debian" in confs else []
    if pypi:
        sides.append(("pypi", (max if higher else min)(pypi, key=lambda c: med(t[c], key))))
    for group, c in sides:
        r = med(d, key) / med(t[c], key)
        pr = [a[key] / b[key] for a, b in zip(d, t[c])]  # paired by round
        target = targets[group][key]
        ok = r >= target if higher else r <= target
        missed += not ok
        total += 1
        against = f"PyTorch {name[c]}" + (" (best 2.15 mode)" if group == "pypi" else "")
        print(f"| {label} | {against} | {r:.2f}x | {min(pr):.2f}-{max(pr):.2f}x | "
              f"{'>=' if higher else '<='} {target:.1f}x | {'yes' if ok else 'NO'} |")
print()
for c in confs:
    x = t[c][0]
    print(f"PyTorch {name[c]}: its peak RSS includes {x['rss_after_import_mib']:.0f} MiB held right after import "
          f"and {x['dataset_mib']:.0f} MiB of Fashion-MNIST bytes; diffuse holds one random batch.")
print("load average (1, 5, 15 min) before each run:")
for line in open(f"{out}/runs.txt"):
    r, who, *l = line.split()
    print(f"  round {r} {who}: {' '.join(l)}")
print(f"{missed} of {total} targets missed" if missed else "all targets met")
EOF
