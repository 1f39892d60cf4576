#!/usr/bin/env bash
# The main job: install, build, train a class-conditional diffusion model on Fashion-MNIST, and
# sample a grid of 100 images with classifier-free guidance, one row per class. On a machine with
# a GPU it trains the `fmnist` preset on CUDA; without one, the `tiny` preset on the CPU, sized to
# finish within 10 minutes on 2 cores.
#   env: STEPS (training steps; given, they all run), GUIDANCE (classifier-free guidance scale of
#        the grid), OUT (output folder, default runs/quickstart), BUDGET (cpu, STEPS not given:
#        seconds from the start by which training must end, default 530)
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
chunk=0  # 0: one run of all the steps
if ./build/diffuse info | grep -q '^cuda:'; then
  preset=fmnist; steps=${STEPS:-20000}; batch=128; tune=()
else
  # From a clean clone on 2 cores (docs/training.md): ~115 s to build, ~0.13 s a step on an AVX-512
  # machine (more without AVX-512), ~10 s for the guided grid; 2000 steps ended in ~390 s. A small
  # model and a short run take a larger learning rate and a shorter EMA. Unless STEPS is given, the
  # steps run in chunks of 250, each resuming the last bit for bit, and a chunk that would end
  # after BUDGET seconds is not started: a slower machine trains fewer steps within the 10 minutes.
  preset=tiny; steps=${STEPS:-2000}; batch=64; tune=(--lr 1e-3 --ema-decay 0.995)
  [[ -n "${STEPS:-}" ]] || chunk=250
fi
budget=${BUDGET:-530}
# Class conditioning (10% of the labels dropped, for classifier-free guidance): measured in
# docs/training.md, the guided samples of the same training are far closer to the test images.
echo "training the class-conditional $preset preset for $steps steps (output in $out)"
train() {
  ./build/diffuse train --preset "$preset" --class-cond --steps "$1" --batch "$batch" --out "$out" "${tune[@]}" \
    --sample-every 0 --checkpoint-every 500 --resume
}
if [[ "$chunk" == 0 ]]; then
  train "$steps"
else
  done_steps=0
  while ((done_steps < steps)); do
    next=$((done_steps + chunk < steps ? done_steps + chunk : steps))
    t0=$SECONDS
    train "$next"
    done_steps=$next
    # The next chunk takes about as long as this one (its start-up included).
    if ((done_steps < steps && SECONDS + (SECONDS - t0) > budget)); then
      echo "quickstart: stopping at $done_steps of $steps steps, so that the whole run stays within 10 minutes" \
        "on this machine ($SECONDS s so far; STEPS=$steps trains them all)"
      break
    fi
  done
fi
# Ancestral DDPM sampling, not the deterministic DDIM: on a briefly trained model the noise each
# step adds corrects the prediction's errors where DDIM carries them to the end (docs/training.md).
# Ten images of each class, a row each, guided with scale GUIDANCE.
./build/diffuse sample "$out/checkpoint.safetensors" --sampler ddpm --count 100 --steps 50 \
  --guidance "${GUIDANCE:-1}" --grid "$out/quickstart.png" --upscale 3
echo
echo "done: 100 samples, a row per class, in $out/quickstart.png"
echo "      the checkpoint is $out/checkpoint.safetensors, the loss log $out/log.csv"
