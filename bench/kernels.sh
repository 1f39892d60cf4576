#!/usr/bin/env bash
# bench/kernels.sh: the kernel comparison in one command, on the GPU of this machine: diffuse's
# kernels (bench/kernels) and the same ops in PyTorch (bench/torch_kernels.py), then the ratios
# against the targets below.
#
#   bash bench/kernels.sh                      # after a build in build/ (docs/benchmarks.md)
#   BUILD=build-rel PYTHON=.venv/bin/python OUT=/tmp/kb bash bench/kernels.sh
#
# Environment: BUILD (the build folder, default build), PYTHON (an interpreter with torch, default
# python3), OUT (where the JSON and logs go, default $BUILD/kernels), ITERS (timed runs, 50),
# WARMUP (10).
#
# Targets (on an H100):
#   noising, time embedding, sampler step, AdamW+EMA   >= 90% of the measured copy bandwidth
#   GroupNorm+SiLU forward and backward                >= 80% of the copy bandwidth, and >= 3x
#                                                         faster than PyTorch's GroupNorm then SiLU
#   attention forward and backward, 256 and 1024        time <= 1.1x PyTorch's fastest
#     tokens, head dim 64                                 scaled_dot_product_attention backend
#
# Without a GPU, or without torch, it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD:-build}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$BUILD/kernels}
ITERS=${ITERS:-50}
WARMUP=${WARMUP:-10}
KB="$BUILD/bench/kernels"

if [[ ! -x "$KB" ]]; then
  echo "kernels.sh: $KB is not built. Build it first:"
  echo "  cmake -S . -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFUSE_CUDA=ON && ninja -C $BUILD kernels"
  exit 1
fi
mkdir -p "$OUT"
rm -f "$OUT/diffuse.json" "$OUT/torch.json"

# diffuse first: it finds out whether a GPU answers (one line and exit 0 when none does).
"$KB" --iters "$ITERS" --warmup "$WARMUP" --json "$OUT/diffuse.json" | tee "$OUT/diffuse.log"
if [[ ! -f "$OUT/diffuse.json" ]]; then
  echo "kernels.sh: no GPU here, so nothing was measured and there are no ratios to print"
  exit 0
fi
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "kernels.sh: $PYTHON has no torch (pip install torch, or PYTHON=<interpreter with torch>): diffuse's"
  echo "figures are in $OUT/diffuse.json; no PyTorch comparison"
  exit 0
fi
"$PYTHON" bench/torch_kernels.py --iters "$ITERS" --warmup "$WARMUP" --json "$OUT/torch.json" | tee "$OUT/torch.log"
if [[ ! -f "$OUT/torch.json" ]]; then
  echo "kernels.sh: PyTorch sees no GPU; no comparison"
  exit 0
fi

"$PYTHON" - "$OUT/diffuse.json" "$OUT/torch.json" <<'EOF'
import json, sys

d, t = (json.load(open(p)) for p in sys.argv[1:3])
copy = d["copy_gbps"]
print(f"\ntargets on {d['device']} ({d['date']}); copy bandwidth {copy:.0f} GB/s, "
      f"bf16 GEMM {d['bf16_gemm_tflops']:.1f} TFLOP/s")
print(f"{'kernel':28} {'shape':42} {'target':>26} {'measured':>10}  verdict")


def ours(kernel, shape, impl="diffuse"):
    return next((r for r in d["rows"] if r["kernel"] == kernel and r["shape"] == shape and r["impl"] == impl), None)


def torch_rows(kernel, shape):
    return [r for r in t["rows"] if r["kernel"] == kernel and r["shape"] == shape]


def line(kernel, shape, target, value, ok):
    print(f"{kernel:28} {shape:42} {target:>26} {value:>10}  {'met' if ok else 'MISSED'}")


for kernel, share in [("noise_forward", 0.9), ("timestep_embedding", 0.9), ("sampler_step", 0.9),
                      ("adamw_ema", 0.9), ("group_norm_silu_forward", 0.8), ("group_norm_silu_backward", 0.8)]:
    for r in (r for r in d["rows"] if r["kernel"] == kernel and r["impl"] == "diffuse"):
        line(kernel, r["shape"], f">= {share:.0%} of copy", f"{r['copy_share']:.0%}", r["copy_share"] >= share)
        if kernel.startswith("group_norm"):
            tr = torch_rows(kernel, r["shape"])
            if tr:
                x = tr[0]["time_us"] / r["time_us"]
                line(kernel, r["shape"], ">= 3x PyTorch", f"{x:.2f}x", x >= 3)
for kernel in ("attention_forward", "attention_backward"):
    for r in (r for r in d["rows"] if r["kernel"] == kernel and r["impl"] in ("diffuse-tc", "diffuse-simt")):
        if not r["shape"].endswith("x64"):
            continue
        tr = torch_rows(kernel, r["shape"])
        if not tr:
            continue
        best = min(tr, key=lambda x: x["time_us"])
        x = r["time_us"] / best["time_us"]
        line(f"{kernel} ({r['impl'][8:]})", r["shape"], f"<= 1.10x {best['impl'][11:]}", f"{x:.2f}x", x <= 1.1)

print("\nevery op against PyTorch's fastest (time ratio torch / diffuse; > 1: diffuse faster)")
for r in d["rows"]:
    if not r["impl"].startswith("diffuse"):
        continue
    tr = torch_rows(r["kernel"], r["shape"])
    if tr:
        best = min(tr, key=lambda x: x["time_us"])
        print(f"  {r['kernel'] + ' [' + r['impl'] + ']':52} {r['shape']:42} {best['time_us'] / r['time_us']:6.2f}x"
              f"  ({best['impl']})")
EOF
