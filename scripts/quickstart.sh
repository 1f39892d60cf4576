#!/usr/bin/env bash
# The main job: install, build, train a class-conditional diffusion model on Fashion-MNIST, and
# sample a grid of 100 images with classifier-free guidance, one row per class. On a machine with
# a GPU it trains the `fmnist` preset on CUDA; without one, the `tiny` preset on the CPU, sized to
# finish within 10 minutes on 2 cores.
#   env: STEPS (training steps), GUIDANCE (classifier-free guidance scale of the grid),
#        OUT (output folder, default runs/quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# The CUDA backend only where a GPU answers: nvcc alone (as on a CPU-only machine with the toolkit)
# would spend minutes compiling kernels that cannot run.
cuda=OFF
if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then cuda=AUTO; fi
echo "building diffuse (CUDA backend: $cuda; log in build/quickstart-build.log)"
mkdir -p build
if ! { cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFUSE_CUDA=$cuda -DDIFFUSE_TESTS=OFF \
         -DDIFFUSE_BENCH=OFF && cmake --build build -j "$(nproc)" --target diffuse_cli; } \
       > build/quickstart-build.log 2>&1; then
  tail -n 40 build/quickstart-build.log
  echo "quickstart: the build failed (whole log: build/quickstart-build.log)" >&2
  exit 1
fi
./build/diffuse info
out=${OUT:-runs/quickstart}
if ./build/diffuse info | grep -q '^cuda:'; then
  preset=fmnist; steps=${STEPS:-20000}; batch=128; tune=()
else
  # From a clean clone on 2 cores (docs/training.md): ~230 s to build, ~0.35 s a step, ~25 s for
  # the guided grid; 900 steps ended in 565 s, build included. A small model and a short run take a larger
  # learning rate and a shorter EMA.
  preset=tiny; steps=${STEPS:-2000}; batch=64; tune=(--lr 1e-3 --ema-decay 0.995)
fi
# Class conditioning (10% of the labels dropped, for classifier-free guidance): measured in
# docs/training.md, the guided samples of the same training are far closer to the test images.
echo "training the class-conditional $preset preset for $steps steps (output in $out)"
./build/diffuse train --preset "$preset" --class-cond --steps "$steps" --batch "$batch" --out "$out" "${tune[@]}" \
  --sample-every 0 --checkpoint-every 500 --resume
# Ancestral DDPM sampling, not the deterministic DDIM: on a briefly trained model the noise each
# step adds corrects the prediction's errors where DDIM carries them to the end (docs/training.md).
# Ten images of each class, a row each, guided with scale GUIDANCE.
./build/diffuse sample "$out/checkpoint.safetensors" --sampler ddpm --count 100 --steps 50 \
  --guidance "${GUIDANCE:-1}" --grid "$out/quickstart.png" --upscale 3
echo
echo "done: 100 samples, a row per class, in $out/quickstart.png"
echo "      the checkpoint is $out/checkpoint.safetensors, the loss log $out/log.csv"
