#!/usr/bin/env bash
# bench/e2e.sh: the end-to-end comparison in one command, on the GPU of this machine:
# diffuse (bench/e2e, with and without CUDA graphs) and the same models in PyTorch
# (bench/torch_e2e.py, eager and torch.compile), then the ratios against the targets
# (docs/benchmarks.md).
#
#   bash bench/e2e.sh                          # after a build in build/ (docs/benchmarks.md)
#   BUILD=build-rel PYTHON=.venv/bin/python OUT=/tmp/e2e bash bench/e2e.sh
#
# Environment: BUILD (the build folder, default build), PYTHON (an interpreter with torch, default
# python3), OUT (where the JSON and logs go, default $BUILD/e2e), PRESETS (default
# ddpm-cifar10,fmnist), BATCH (128), SAMPLE_BATCHES (256,1), SAMPLE_STEPS (20), ITERS (30),
# COMPILE_MODE (torch.compile's mode, default "default").
#
# Without a GPU, or without torch, it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD:-build}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$BUILD/e2e}
PRESETS=${PRESETS:-ddpm-cifar10,fmnist}
BATCH=${BATCH:-128}
SAMPLE_BATCHES=${SAMPLE_BATCHES:-256,1}
SAMPLE_STEPS=${SAMPLE_STEPS:-20}
ITERS=${ITERS:-30}
COMPILE_MODE=${COMPILE_MODE:-default}
E2E="$BUILD/bench/e2e"

if [[ ! -x "$E2E" ]]; then
  echo "e2e.sh: $E2E is not built. Build it first:"
  echo "  cmake -S . -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFUSE_CUDA=ON && ninja -C $BUILD e2e"
  exit 1
fi
mkdir -p "$OUT"
rm -f "$OUT/diffuse.json" "$OUT/torch.json"

# diffuse first: it finds out whether a GPU answers (one line and exit 0 when none does).
"$E2E" --preset "$PRESETS" --batch "$BATCH" --sample-batch "$SAMPLE_BATCHES" --sample-steps "$SAMPLE_STEPS" \
  --iters "$ITERS" --json "$OUT/diffuse.json" | tee "$OUT/diffuse.log"
if [[ ! -f "$OUT/diffuse.json" ]]; then
  echo "e2e.sh: no GPU here, so nothing was measured and there are no ratios to print"
  exit 0
fi

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "e2e.sh: $PYTHON has no torch (pip install torch, or PYTHON=<interpreter with torch>): diffuse's figures"
  echo "are in $OUT/diffuse.json; no PyTorch comparison"
  exit 0
fi
# The PyTorch twin must be the same model: same parameters (checked inside torch_e2e.py) and the
# same forward for the same weights (checked here, on the cpu).
for p in ${PRESETS//,/ }; do
  "$E2E" --export-twin "$p" "$OUT/twin-$p.safetensors" >/dev/null
  "$PYTHON" bench/torch_e2e.py --preset "$p" --check-twin "$OUT/twin-$p.safetensors"
done
"$PYTHON" bench/torch_e2e.py --preset "$PRESETS" --batch "$BATCH" --sample-batch "$SAMPLE_BATCHES" \
  --sample-steps "$SAMPLE_STEPS" --iters "$ITERS" --compile-mode "$COMPILE_MODE" --json "$OUT/torch.json" \
  | tee "$OUT/torch.log"
if [[ ! -f "$OUT/torch.json" ]]; then
  echo "e2e.sh: PyTorch sees no GPU; no comparison"
  exit 0
fi

"$PYTHON" - "$OUT/diffuse.json" "$OUT/torch.json" <<'EOF'
import json, sys

d, t = (json.load(open(p)) for p in sys.argv[1:3])
print("(the vs columns: how many times faster diffuse's best path is than PyTorch's, in throughput)")
print(f"\ndiffuse vs PyTorch {t['torch']} on {d['device']} ({d['date']}); "
      f"bf16 GEMM {d['bf16_gemm_tflops']:.0f} TFLOP/s")

def pick(rows, **want):
    for r in rows:
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None

checks = []  # (what, value, target, ok)
for dp in d["presets"]:
    tp = next((p for p in t["presets"] if p["preset"] == dp["preset"]), None)
    if tp is None:
        continue
    name = dp["preset"]
    print(f"\n{name} ({dp['parameters']:,} parameters, {dp['forward_gflop_per_image']:.2f} GFLOP forward per image)")
    print(f"  {'':28s} {'diffuse graph':>14s} {'diffuse eager':>14s} {'torch eager':>12s} {'torch compile':>14s}"
          f" {'vs eager':>9s} {'vs compile':>10s}")
    dg, de = pick(dp["train"], graph=True), pick(dp["train"], graph=False)
    te, tc = pick(tp["train"], mode="eager"), pick(tp["train"], mode="compile")
    best = dg or de
    fmt = lambda r, k: f"{r[k]:.1f}" if r else "-"
    ratio = lambda a, b, k: a[k] / b[k] if a and b else float("nan")
    print(f"  {'train b' + str(dp['train'][0]['batch']) + ' img/s':28s} {fmt(dg, 'images_per_s'):>14s} "
          f"{fmt(de, 'images_per_s'):>14s} {fmt(te, 'images_per_s'):>12s} {fmt(tc, 'images_per_s'):>14s} "
          f"{ratio(best, te, 'images_per_s'):9.2f} {ratio(best, tc, 'images_per_s'):10.2f}")
    if name == "ddpm-cifar10" and best:
        checks.append(("train ddpm-cifar10 b128: x torch.compile", ratio(best, tc, "images_per_s"), 1.3))
        checks.append(("train ddpm-cifar10 b128: share of bf16 GEMM rate", best["share_of_bf16_gemm"], 0.35))
    for b in sorted({r["batch"] for r in dp["sample"]}, reverse=True):
        sg, se = pick(dp["sample"], graph=True, batch=b), pick(dp["sample"], graph=False, batch=b)
        ste, stc = pick(tp["sample"], mode="eager", batch=b), pick(tp["sample"], mode="compile", batch=b)
        sb = sg or se
        print(f"  {'sample b' + str(b) + ' ms/step':28s} {fmt(sg, 'median_step_ms'):>14s} {fmt(se, 'median_step_ms'):>14s} "
              f"{fmt(ste, 'median_step_ms'):>12s} {fmt(stc, 'median_step_ms'):>14s} "
              f"{ratio(ste, sb, 'median_step_ms'):9.2f} {ratio(stc, sb, 'median_step_ms'):10.2f}")
        if name == "ddpm-cifar10" and sb and b == 256:
            checks.append(("sampling ddpm-cifar10 b256: x torch.compile", ratio(stc, sb, "median_step_ms"), 1.5))
        if name == "ddpm-cifar10" and sb and b == 1:
            checks.append(("sampler step ddpm-cifar10 b1: x torch eager", ratio(ste, sb, "median_step_ms"), 5.0))
            checks.append(("sampler step ddpm-cifar10 b1: ms (under)", sb["median_step_ms"], -1.0))
    for r in dp["train"] + dp["sample"]:
        s = r["steady_state"]
        if s["host_syncs"] or s["device_allocs"]:
            print(f"  WASTE: {'graph' if r['graph'] else 'eager'} batch {r['batch']}: {s['host_syncs']} host syncs, "
                  f"{s['device_allocs']} cudaMalloc calls in the timed steps (must be 0)")

print("\ntargets (H100):")
for what, value, target in checks:
    ok = value < -target if target < 0 else value >= target
    want = f"< {-target:g}" if target < 0 else f">= {target:g}"
    print(f"  {what:52s} {value:8.3f}   target {want:7s} {'met' if ok else 'NOT met'}")
EOF
