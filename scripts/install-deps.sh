#!/usr/bin/env bash
# Installs what diffuse needs, from Debian's packages (with --no-install-recommends: a package's
# Recommends are not there, so everything used is named here). Run as root.
#   (no option)  build diffuse and train with it: what scripts/quickstart.sh needs
#   --tests      also what the tests use: Catch2, binutils, and the project's Python (below)
#   --bench      also what the comparison benchmarks need (PyTorch from Debian)
#   --fuzz       also clang with libFuzzer and its OpenMP runtime (scripts/sanitize.sh, fuzz.sh)
#   --list       print what the other options would install, one name a line, and install nothing
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config
      libcli11-dev nlohmann-json3-dev libstb-dev zlib1g-dev libboost-context-dev
      libopenblas-dev libdnnl-dev dataset-fashion-mnist)
test_pkgs=(catch2
      # readelf and nm check the shared library's soname and exports.
      binutils
      # CI's two gcc builds (scripts/test.sh's and scripts/sim.sh's) share their alike objects (.ci/run).
      ccache
      # Debian's python3 with Debian's NumPy runs examples/python/embed_ctypes.py and reads a
      # checkpoint with the safetensors package (tests/capi/embed_examples.sh); python3-venv makes
      # the venv below.
      python3 python3-numpy python3-venv
      # PyTorch and what diffusers and huggingface_hub import, from Debian where it has them: the
      # diffusers interop test (tests/interop) builds UNet2DModels and compares them with diffuse.
      python3-torch python3-filelock python3-regex python3-requests python3-pil
      python3-importlib-metadata python3-tqdm python3-typing-extensions python3-packaging python3-yaml)
# The project's Python packages from PyPI (--tests), into the venv made below. huggingface_hub
# 0.21.4 is one diffusers 0.27.2 works with (later ones dropped cached_download, which it
# imports); fsspec because Debian's is older than huggingface_hub needs.
pip_pkgs=(safetensors==0.8.0 diffusers==0.27.2 huggingface_hub==0.21.4 fsspec==2024.2.0)
list= tests=
for arg in "$@"; do
  case "$arg" in
    --tests) tests=1; pkgs+=("${test_pkgs[@]}") ;;
    --bench) pkgs+=(python3 python3-torch python3-numpy) ;;
    --fuzz) pkgs+=(clang libclang-rt-14-dev libomp-14-dev) ;;
    # What would be installed, one name a line (Debian's packages, then pip:NAME), and nothing
    # else: scripts/check-deps.sh reads the lists from here, their one definition.
    --list) list=1 ;;
    *) echo "install-deps.sh: unknown option $arg (expected --tests, --bench, --fuzz or --list)" >&2; exit 2 ;;
  esac
done
if [[ -n $list ]]; then
  printf '%s\n' "${pkgs[@]}"
  [[ -n $tests ]] && printf 'pip:%s\n' "${pip_pkgs[@]%%==*}"
  exit 0
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
# The project's Python: a venv of Debian's own python3 (/usr/bin/python3, not whatever python3 is
# first on PATH) that sees Debian's packages (NumPy, PyTorch) and adds the
# packages above from PyPI, which Debian does not have. Tests and benchmarks call it by its
# path, .venv/bin/python (CMake: DIFFUSE_PYTHON); scripts/check-deps.sh checks that every module a
# test imports comes from here.
[[ -n $tests ]] || exit 0
venv=$(cd "$(dirname "$0")/.." && pwd)/.venv
if ! "$venv/bin/python" -c 'import numpy' 2>/dev/null; then
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
# Pinned versions: pip answers from the venv, without the network, once they are there.
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${pip_pkgs[@]}"
