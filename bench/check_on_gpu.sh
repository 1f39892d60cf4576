#!/usr/bin/env bash
# bench/check_on_gpu.sh BINARY NAME ARGS...: a short run of a benchmark program (a cuda-tier ctest
# entry). Exits 77, which ctest reports as skipped, where the program prints its "NAME: no GPU ("
# line; otherwise passes when the program exits 0 having written its JSON (--json is added).
set -u
json=$(mktemp --suffix=.json)
trap 'rm -f "$json"' EXIT
out=$("$1" "${@:3}" --json "$json")
rc=$?
printf '%s\n' "$out"
[[ $out == "$2: no GPU ("* ]] && exit 77
((rc == 0)) || { echo "$1 exited with $rc"; exit 1; }
[[ -s $json ]] || { echo "$1 wrote no JSON"; exit 1; }
