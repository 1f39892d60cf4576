#!/usr/bin/env bash
# CUDA compiler launcher (CMAKE_CUDA_COMPILER_LAUNCHER): runs the nvcc command line it is given,
# keeps ptxas's per-kernel report (-Xptxas=-v: registers, shared memory, stack, spills) beside
# the object as <object>.ptxas.txt, shows the compiler's other output as usual, and fails the
# compile when any kernel spills registers: a spill is a build error, not a log line to miss.
set -uo pipefail
out=""
prev=""
for a in "$@"; do
  [[ "$prev" == "-o" ]] && out=$a
  prev=$a
done
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$@" >"$log" 2>&1
rc=$?
grep -v -e '^ptxas info' -e '^    [0-9]* bytes stack frame' "$log" >&2
if [[ -n "$out" ]]; then
  grep -e '^ptxas info' -e 'bytes stack frame' "$log" >"$out.ptxas.txt" 2>/dev/null || true
fi
((rc == 0)) || exit "$rc"
# ptxas prints "N bytes spill stores, M bytes spill loads" under each function's properties.
spills=$(grep -E "(^|[^0-9])[1-9][0-9]* bytes spill (stores|loads)" "$log" || true)
if [[ -n "$spills" ]]; then
  echo "error: register spills in ${out:-the CUDA object} (the whole report: $out.ptxas.txt):" >&2
  grep -B1 -E "(^|[^0-9])[1-9][0-9]* bytes spill (stores|loads)" "$log" | sed 's/^/  /' >&2
  rm -f "$out"
  exit 1
fi
exit 0
