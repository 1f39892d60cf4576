#!/usr/bin/env bash
# The main job: install, build, then show what diffuse sees on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFUSE_TESTS=OFF
cmake --build build -j "$(nproc)" --target diffuse_cli
./build/diffuse info
