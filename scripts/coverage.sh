#!/usr/bin/env bash
# Line coverage of the GPU code under the emu and sim tiers (docs/kernels.md, "Coverage of the GPU
# code"): a gcc build with DIFFUSE_CUDA=SIM and --coverage, the emu and sim tiers run in it, then
# gcov per object and one row per file:
#   - every file of kernels/cuda/ (the .cu kernels run by the emulator in the emu tier and by the
#     simulated device in the sim tier; the *_cuda.cpp library calls; the headers' inline code),
#   - core/: allocator_cuda.cpp and cuda_check.h whole, and of core/device.cpp, graph.cpp,
#     stream.cpp and tensor.cpp the lines inside their DIFFUSE_HAVE_CUDA blocks (the rest is cpu code),
#   - the device training step and sampling loop: models/train/graph_step*.cpp, device_*.cpp,
#     models/diffusion/device_*.cpp and sampling_loop*.cpp (the names these have had).
# A line counts when gcov marks it executable; it is covered when any object that compiles it (a .cu
# is compiled twice, for the emulator and for the simulated device) ran it.
# -O1 (gcov's lines stay close to the source, the emulator not too slow) and only the files above
# instrumented (-fprofile-filter-files). Warnings are not errors here: -O1 warns differently from the
# CI builds, which check them.
#
# Usage: scripts/coverage.sh BUILD_DIR [--report-only]   (env: JOBS)
#   --report-only: no build and no tests, the table from the counters BUILD_DIR already holds.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: scripts/coverage.sh BUILD_DIR [--report-only]}
jobs=${JOBS:-$(nproc)}
root=$PWD
dirs="core;kernels;models;diffusion;tools"
if [[ ${2:-} != --report-only ]]; then
  start=$SECONDS
  bash scripts/install-deps.sh --tests
  mkdir -p "$build"
  # gcc's list of regular expressions, quoted for the shell that runs each compile (';').
  filter=".*/kernels/cuda/.*;.*/core/.*;.*/models/train/.*;.*/models/diffusion/.*"
  CC=gcc CXX=g++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDIFFUSE_CUDA=SIM -DDIFFUSE_WERROR=OFF \
        "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG" "-DCMAKE_C_FLAGS_RELEASE=-O1 -DNDEBUG" \
        "-DCMAKE_CXX_FLAGS=--coverage '-fprofile-filter-files=$filter'" \
        -DCMAKE_EXE_LINKER_FLAGS=--coverage -DCMAKE_SHARED_LINKER_FLAGS=--coverage \
        -DDIFFUSE_TESTS=ON -DDIFFUSE_BENCH=ON "-DDIFFUSE_TEST_DIRS=$dirs" -DDIFFUSE_TEST_TIMEOUT=3600 \
        > "$build/coverage-configure.log" 2>&1 ||
    { tail -n 20 "$build/coverage-configure.log"; echo "coverage.sh: configuring failed" >&2; exit 1; }
  targets=(diffuse_cli test_sim e2e kernels)
  IFS=';' read -ra list <<< "$dirs"
  for d in "${list[@]}"; do targets+=("test_$d"); done
  cmake --build "$build" -j "$jobs" --target "${targets[@]}" > "$build/coverage-build.log" 2>&1 ||
    { tail -n 60 "$build/coverage-build.log"; echo "coverage.sh: the build failed" >&2; exit 1; }
  echo "coverage.sh: built in $((SECONDS - start)) s"
  find "$build" -name '*.gcda' -delete
  t0=$SECONDS
  # A failing test still leaves its counters; the table is written either way, and the exit status
  # says whether the tiers passed.
  tests_ok=1
  ctest --test-dir "$build" -L 'emu|sim' --output-on-failure -j "$jobs" > "$build/coverage-tests.log" 2>&1 || tests_ok=0
  tail -n 15 "$build/coverage-tests.log"
  echo "coverage.sh: the emu and sim tiers ran in $((SECONDS - t0)) s"
fi

out=$(mktemp -d "${TMPDIR:-/tmp}/diffuse-cov.XXXXXX")
trap 'rm -rf "$out"' EXIT
# One gcov JSON per object (its .gcno, with the .gcda where the object ran: an object that never
# ran still lists its lines, all unexecuted).
find "$build" -name '*.gcno' -print0 |
  xargs -0 -P "$jobs" -I{} sh -c 'gcov -j -t -o "$(dirname "$1")" "$1" 2>/dev/null > "$2/$(printf %s "$1" | md5sum | cut -c1-20).json"' \
    sh {} "$out"
/usr/bin/python3 - "$root" "$out" <<'PY'
import glob, json, os, re, sys

root, out = sys.argv[1], sys.argv[2]
whole = [r"kernels/cuda/[^/]+$", r"core/[^/]*_cuda\.(cpp|h)$", r"core/cuda_check\.h$", r"core/[^/]+\.cu$",
         r"models/train/graph_step[^/]*\.cpp$", r"models/train/device_[^/]+\.cpp$",
         r"models/diffusion/device_[^/]+\.cpp$", r"models/diffusion/sampling_loop[^/]*\.cpp$"]
cuda_blocks = {"core/device.cpp", "core/graph.cpp", "core/stream.cpp", "core/tensor.cpp"}

def gpu_lines(path):
    """The lines of `path` inside #if defined(DIFFUSE_HAVE_CUDA) / #ifdef DIFFUSE_HAVE_CUDA blocks
    (up to their #else or #endif), by a stack of the preprocessor conditionals."""
    keep, stack = set(), []
    for n, line in enumerate(open(os.path.join(root, path), errors="replace"), 1):
        s = line.strip()
        if re.match(r"#\s*if", s):
            stack.append(bool(re.search(r"DIFFUSE_HAVE_CUDA\b", s)) and "!" not in s)
        elif re.match(r"#\s*el", s) and stack:
            stack[-1] = False
        elif re.match(r"#\s*endif", s) and stack:
            stack.pop()
        elif any(stack):
            keep.add(n)
    return keep

lines = {}  # file -> {line: executed}
for f in glob.glob(os.path.join(out, "*.json")):
    text = open(f).read().strip()
    if not text:
        continue
    for doc in text.splitlines():
        d = json.loads(doc)
        cwd = d.get("current_working_directory", "")
        for entry in d.get("files", []):
            p = os.path.normpath(os.path.join(cwd, entry["file"]))
            if not p.startswith(root + "/"):
                continue
            rel = os.path.relpath(p, root)
            if not (any(re.match(w, rel) for w in whole) or rel in cuda_blocks):
                continue
            m = lines.setdefault(rel, {})
            for l in entry.get("lines", []):
                n = l["line_number"]
                m[n] = m.get(n, False) or l["count"] > 0

rows, tot_n, tot_run = [], 0, 0
for rel in sorted(lines):
    m = lines[rel]
    if rel in cuda_blocks:
        keep = gpu_lines(rel)
        m = {n: v for n, v in m.items() if n in keep}
        rel += " (CUDA blocks)"
    if not m:
        continue
    n, run = len(m), sum(m.values())
    tot_n += n
    tot_run += run
    rows.append((rel, n, run))
print("| file | lines | run | % |")
print("| --- | ---: | ---: | ---: |")
for rel, n, run in rows:
    print(f"| `{rel}` | {n} | {run} | {100.0 * run / n:.1f}{'' if run >= 0.9 * n else ' (below 90)'} |")
if tot_n:
    print(f"| all of the above | {tot_n} | {tot_run} | {100.0 * tot_run / tot_n:.1f} |")
PY
[[ ${tests_ok:-1} == 1 ]] || { echo "coverage.sh: some emu or sim tests failed ($build/coverage-tests.log)" >&2; exit 1; }
