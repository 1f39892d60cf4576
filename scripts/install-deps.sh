#!/usr/bin/env bash
# Installs what diffuse needs to build, test and train, from Debian's packages. Run as root.
# Pass --bench to add what the comparison benchmarks need (PyTorch from Debian), --fuzz to add
# clang with libFuzzer and its OpenMP runtime (scripts/fuzz.sh).
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config
      catch2 libcli11-dev nlohmann-json3-dev libstb-dev zlib1g-dev libboost-context-dev
      libopenblas-dev libdnnl-dev dataset-fashion-mnist
      # binutils: readelf and nm check the shared library's soname and exports; python3 and NumPy
      # run examples/python/embed_ctypes.py (tests/capi/embed_examples.sh)
      binutils python3 python3-numpy python3-pip)
for arg in "$@"; do
  case "$arg" in
    --bench) pkgs+=(python3 python3-torch python3-numpy) ;;
    --fuzz) pkgs+=(clang libclang-rt-14-dev libomp-14-dev) ;;
    *) echo "install-deps.sh: unknown option $arg (expected --bench or --fuzz)" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The safetensors package (PyPI; Debian has none): tests/capi/embed_examples.sh reads a checkpoint
# with it, as PyTorch users would. Debian's python refuses pip installs outside a venv unless told.
if ! python3 -c 'import safetensors' 2>/dev/null; then
  python3 -m pip install -q safetensors 2>/dev/null ||
    python3 -m pip install -q --break-system-packages safetensors
fi
