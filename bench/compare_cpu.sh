#!/usr/bin/env bash
# bench/compare_cpu.sh: diffuse against PyTorch on the CPU, in one run. The `tiny` UNet (280,177
# parameters) trained at batch 64 on 28x28x1 images and sampled with DDIM (50 steps, batch 256),
# by bench/cpu_train_step and by bench/torch_cpu_tiny.py (the same model in PyTorch; it fails if
# the parameter counts differ), with the same steps and threads. Prints each figure for both, the
# ratio diffuse / PyTorch and the target it is held to (docs/benchmarks.md records a run).
#
#   bash bench/compare_cpu.sh                 # from a clean clone, as root (installs packages)
#   STEPS=40 THREADS=1 bash bench/compare_cpu.sh
#
# Knobs: STEPS (timed training steps after 3 warm-up steps, 20), THREADS (OpenMP threads for
# diffuse, torch.set_num_threads for PyTorch; nproc), SAMPLE_BATCH (256), SAMPLE_STEPS (50),
# BUILD_DIR (build-compare), JOBS (build jobs; nproc), SKIP_DEPS=1 (do not run install-deps.sh).
# The defaults took 155 s on 2 cores from a clean clone, about half of it the build
# (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-20}
THREADS=${THREADS:-$(nproc)}
SAMPLE_BATCH=${SAMPLE_BATCH:-256}
SAMPLE_STEPS=${SAMPLE_STEPS:-50}
BUILD_DIR=${BUILD_DIR:-build-compare}
JOBS=${JOBS:-$(nproc)}
OUT="$BUILD_DIR/compare"

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
rm -f "$OUT/diffuse.json" "$OUT/torch.json"

echo "compare_cpu: $(nproc) cores, $THREADS threads, $STEPS timed steps; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== diffuse"
"$BUILD_DIR/bench/cpu_train_step" --preset tiny --batch 64 --steps "$STEPS" --sample-batch "$SAMPLE_BATCH" \
  --sample-steps "$SAMPLE_STEPS" --threads "$THREADS" --lr 2e-4 --json "$OUT/diffuse.json"
echo "== PyTorch"
OMP_NUM_THREADS="$THREADS" /usr/bin/python3 bench/torch_cpu_tiny.py --batch 64 --steps "$STEPS" \
  --sample-batch "$SAMPLE_BATCH" --sample-steps "$SAMPLE_STEPS" --threads "$THREADS" --lr 2e-4 \
  --diffuse-json "$OUT/diffuse.json" --json "$OUT/torch.json"
echo "compare_cpu: load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

/usr/bin/python3 - "$OUT/diffuse.json" "$OUT/torch.json" <<'EOF'
import json, sys
d, t = (json.load(open(p)) for p in sys.argv[1:3])
# (label, key, target on diffuse / PyTorch, True when higher is better)
rows = [("training images/s", "train_images_per_s", 1.0, True),
        ("sampling images/s", "sample_images_per_s", 1.2, True),
        ("peak RSS (MiB)", "peak_rss_mib", 1.0, False)]
print(f"tiny UNet ({d['parameters']:,} parameters), {d['threads']} threads, batch {d['batch']}, "
      f"{d['steps']} timed steps; DDIM {d['sample_steps']} steps at batch {d['sample_batch']}")
print(f"training ms/step (median): diffuse {d['train_ms_per_step']:.1f}, PyTorch {t['train_ms_per_step']:.1f}")
print()
print(f"| metric | diffuse | PyTorch {t['framework'].split()[-1]} | diffuse / PyTorch | target | met |")
print("| --- | ---: | ---: | ---: | --- | --- |")
missed = 0
for label, key, target, higher in rows:
    r = d[key] / t[key]
    ok = r >= target if higher else r <= target
    missed += not ok
    print(f"| {label} | {d[key]:.1f} | {t[key]:.1f} | {r:.2f}x | {'>=' if higher else '<='} {target:.1f}x | "
          f"{'yes' if ok else 'NO'} |")
print()
print(f"PyTorch's peak RSS includes {t['rss_after_import_mib']:.0f} MiB for the interpreter and libtorch "
      f"(measured after import) and {t['dataset_mib']:.0f} MiB of Fashion-MNIST bytes; diffuse holds one random batch.")
print(f"{missed} of {len(rows)} targets missed" if missed else "all targets met")
EOF
