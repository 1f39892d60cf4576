#!/usr/bin/env bash
# Installs what diffuse needs to build, test and train, from Debian's packages. Run as root.
# Pass --bench to add what the comparison benchmarks need (PyTorch from Debian).
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config
      catch2 libcli11-dev nlohmann-json3-dev libstb-dev zlib1g-dev libboost-context-dev
      libopenblas-dev dataset-fashion-mnist)
if [[ "${1:-}" == "--bench" ]]; then
  pkgs+=(python3 python3-torch python3-numpy)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
