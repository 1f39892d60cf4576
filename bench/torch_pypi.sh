#!/usr/bin/env bash
# bench/torch_pypi.sh: the newest PyTorch from PyPI (torch 2.15.0, what a user installs today), in
# a folder of its own, for the CPU comparison (bench/compare_cpu.sh). Never installed system-wide.
#
#   bash bench/torch_pypi.sh DIR                    # install into DIR (idempotent), then check it
#   bash bench/torch_pypi.sh DIR -- CMD [ARGS...]   # install if needed, then run CMD with it
#
# PyPI's Linux wheel of torch 2.15 is built with CUDA 13 and loads its CUDA libraries even on a
# machine without a GPU, so it runs here only when they are found: the CUDA toolkit's own library
# folder (CUDA_LIB, else the folder of libcudart.so.13 beside nvcc or under /usr/local/cuda*) and
# four small wheels that the toolkit lacks (cufile, cusparselt, nvshmem, nccl), installed with
# --no-deps; torch itself goes in with --no-deps too (its declared dependencies are the whole CUDA
# stack as wheels, gigabytes), its pure-Python dependencies normally. Layout of DIR:
#   wheels/  the downloaded wheels (pip download; a file already there is not fetched again)
#   torch/   torch and the four CUDA wheels (pip install --target, --no-deps)
#   deps/    sympy, networkx, jinja2, fsspec, filelock, typing-extensions, numpy and their deps
#   ok       written last, with the version: its presence is what "installed" means
# Knobs: PYTHON (the interpreter that runs it, python3; a CPython 3.11 for the cp311 wheel),
# TORCH_VERSION (2.15.0), CUDA_LIB (the toolkit's library folder).
set -euo pipefail

die() { echo "torch_pypi: $*" >&2; exit 1; }
[[ $# -ge 1 ]] || die "usage: bash bench/torch_pypi.sh DIR [-- CMD ARGS...]"
DIR=$1
shift
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.15.0}
CUDA_WHEELS=(nvidia-cufile nvidia-cusparselt-cu13==0.8.1 nvidia-nvshmem-cu13==3.7.2 nvidia-nccl-cu13==2.30.7)
PURE_DEPS=(sympy networkx jinja2 fsspec filelock typing-extensions numpy)
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

cuda_lib() {
  if [[ -n "${CUDA_LIB:-}" ]]; then
    [[ -e "$CUDA_LIB/libcudart.so.13" ]] || die "CUDA_LIB=$CUDA_LIB has no libcudart.so.13"
    echo "$CUDA_LIB"; return
  fi
  local cands=() nvcc
  if nvcc=$(command -v nvcc 2>/dev/null); then
    nvcc=$(readlink -f "$nvcc")
    cands+=("$(dirname "$nvcc")/../lib64" "$(dirname "$nvcc")/../lib")
  fi
  cands+=(/usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda-13*/lib64 /usr/local/cuda-13*/lib)
  for d in "${cands[@]}"; do
    [[ -e "$d/libcudart.so.13" && -e "$d/libcublas.so.13" ]] && { (cd "$d" && pwd); return; }
  done
  die "no CUDA 13 toolkit libraries (libcudart.so.13, libcublas.so.13) found beside nvcc or under" \
      "/usr/local/cuda*; PyPI's torch $TORCH_VERSION needs them even without a GPU: install the" \
      "CUDA 13 toolkit or set CUDA_LIB to its library folder"
}

install() {
  local want="torch $TORCH_VERSION"
  [[ -f "$DIR/ok" && "$(cat "$DIR/ok")" == "$want" ]] && return
  "$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (set PYTHON to a CPython 3.11 with pip)"
  echo "torch_pypi: installing $want and its CUDA 13 runtime wheels into $DIR (about 900 MB of downloads)"
  rm -f "$DIR/ok"
  "$PYTHON" -m pip download --no-deps -d "$DIR/wheels" "torch==$TORCH_VERSION" "${CUDA_WHEELS[@]}" \
    >"$DIR/download.log" 2>&1 ||
    { tail -15 "$DIR/download.log" >&2; die "downloading torch==$TORCH_VERSION and the CUDA wheels from PyPI failed (log: $DIR/download.log)"; }
  rm -rf "$DIR/torch" "$DIR/deps"
  "$PYTHON" -m pip install --no-deps --no-index --find-links "$DIR/wheels" --target "$DIR/torch" \
    "torch==$TORCH_VERSION" "${CUDA_WHEELS[@]}" >"$DIR/install.log" 2>&1 ||
    { tail -15 "$DIR/install.log" >&2; die "installing the downloaded wheels failed (log: $DIR/install.log)"; }
  "$PYTHON" -m pip install --target "$DIR/deps" "${PURE_DEPS[@]}" >>"$DIR/install.log" 2>&1 ||
    { tail -15 "$DIR/install.log" >&2; die "installing torch's Python dependencies from PyPI failed (log: $DIR/install.log)"; }
  echo "$want" >"$DIR/ok"
}

install
CUDA_LIB_DIR=$(cuda_lib)
libs=("$CUDA_LIB_DIR")
for d in "$DIR"/torch/nvidia/*/lib; do libs+=("$d"); done
LD_LIBRARY_PATH="$(IFS=:; echo "${libs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
PYTHONPATH="$DIR/torch:$DIR/deps${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH PYTHONPATH

if [[ $# -eq 0 ]]; then
  v=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>&1) || die "torch does not import: $v"
  echo "torch_pypi: $v in $DIR, CUDA libraries from $CUDA_LIB_DIR"
  exit 0
fi
[[ "$1" == "--" ]] || die "expected -- before the command, got $1"
shift
[[ "${1:-}" == python3 ]] && { shift; set -- "$PYTHON" "$@"; }
exec "$@"
