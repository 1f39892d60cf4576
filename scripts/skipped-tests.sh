#!/usr/bin/env bash
# Lists every test that the last ctest run in each BUILD_DIR reported skipped, with the reason it
# printed, and fails if any of them is not a `cuda`-tier entry: on a machine without a GPU the cuda
# tier is the only thing allowed to skip; anything else skipping means a missing install step.
# Reads ctest's JUnit report, BUILD_DIR/ctest-junit.xml (scripts/test.sh and scripts/sanitize.sh
# ask ctest for it; its plain log records a skipped test as passed).
#
#   scripts/skipped-tests.sh BUILD_DIR...
set -euo pipefail
cd "$(dirname "$0")/.."
(($#)) || { echo "usage: scripts/skipped-tests.sh BUILD_DIR..." >&2; exit 2; }
for build in "$@"; do
  [[ -f $build/ctest-junit.xml ]] || { echo "skipped-tests.sh: $build has no ctest-junit.xml (run its tests first)" >&2; exit 2; }
  ctest --test-dir "$build" -N -L cuda | sed -n 's/^ *Test *#[0-9]*: *//p' > "$build/ctest-cuda-names.txt"
done
/usr/bin/python3 - "$@" <<'PY'
import os, sys
import xml.etree.ElementTree as ET

bad = 0
print("skipped tests (name, build folder, tier, reason):")
for build in sys.argv[1:]:
    cuda = set(open(os.path.join(build, "ctest-cuda-names.txt")).read().split("\n")) - {""}
    for case in ET.parse(os.path.join(build, "ctest-junit.xml")).getroot().iter("testcase"):
        if case.find("skipped") is None:
            continue
        name = case.get("name")
        lines = [l for l in (case.findtext("system-out") or "").splitlines() if l.strip()]
        reason = next((l for l in lines if "skip" in l.lower()), lines[-1] if lines else case.find("skipped").get("message"))
        tier = "cuda" if name in cuda else "NOT-CUDA"
        bad += tier != "cuda"
        print(f"  {name:28s} {os.path.basename(os.path.normpath(build)):14s} {tier:9s} {reason.strip()}")
if bad:
    print("skipped-tests.sh: FAILED: a test outside the cuda tier skipped (a missing install step is a failure, "
          "not a skip)", file=sys.stderr)
    sys.exit(1)
print("(only cuda-tier entries may be here on a machine without a GPU)")
PY
