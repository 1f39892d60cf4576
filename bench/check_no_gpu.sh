#!/usr/bin/env bash
# bench/check_no_gpu.sh BINARY NAME: the no-GPU path of a benchmark program (a ctest entry, run with
# CUDA_VISIBLE_DEVICES=-1 so that it holds on a GPU machine too). Passes when BINARY exits 0 having
# printed exactly one line, starting "NAME: no GPU (".
set -u
out=$("$1") || { echo "$1 exited with $?"; exit 1; }
printf '%s\n' "$out"
[[ $(printf '%s\n' "$out" | wc -l) -eq 1 && $out == "$2: no GPU ("* ]] || { echo "expected one line '$2: no GPU (...'"; exit 1; }
