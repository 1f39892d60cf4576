#!/usr/bin/env bash
# Fails when a build or a test uses something that scripts/install-deps.sh does not install, so a
# missing install step shows on a machine that happens to have the package already.
#
#   scripts/check-deps.sh BUILD_DIR [install-deps options, e.g. --fuzz]
#
# What the build used, read off the build itself:
#   - every header outside the tree that the compiler read (ninja's dependency log),
#   - every library and program the CMake cache found (FILEPATH/PATH entries) and every library
#     on a link line (build.ninja),
#   - every Python module that a test or example imports (tests/**/*.sh, examples/python/*.py),
#     resolved by the interpreter the tests use (DIFFUSE_PYTHON in the cache).
# Each file is mapped to its Debian package with `dpkg -S`. The package must be one that
# install-deps.sh lists (`install-deps.sh --list`) or one those pull in through Depends or
# Pre-Depends, never Recommends (install-deps.sh installs with --no-install-recommends). A Python
# module from the venv must be one install-deps.sh pip-installs. Files that no package owns are
# allowed only from the CUDA toolkit and cuDNN, which this machine kind provides outside Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: scripts/check-deps.sh BUILD_DIR [install-deps options]}
shift
[[ -f "$build/CMakeCache.txt" ]] || { echo "check-deps.sh: $build is not a configured build folder" >&2; exit 2; }
[[ -f "$build/build.ninja" ]] || { echo "check-deps.sh: $build was not configured with -G Ninja" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/diffuse-deps.XXXXXX")
trap 'rm -rf "$work"' EXIT
bash scripts/install-deps.sh --list "$@" > "$work/listed"
# The Depends closure: apt-cache prints each package it reaches at the start of a line (virtual
# packages in <>). Alternatives (|Depends) all count: apt takes one of them, and the one it took is
# what is installed here.
grep -v '^pip:' "$work/listed" |
  xargs apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
    --no-enhances 2>/dev/null | grep -v '^ ' | sed 's/:.*//' | sort -u > "$work/closure"
ninja -C "$build" -t deps > "$work/ninja-deps" 2>/dev/null
/usr/bin/python3 - "$build" "$work" "$PWD" <<'PY'
import os, re, subprocess, sys

build, work, src = sys.argv[1], sys.argv[2], sys.argv[3]
build = os.path.realpath(build)
closure = set(open(os.path.join(work, "closure")).read().split())
listed = open(os.path.join(work, "listed")).read().split()
pip_listed = {p[4:].lower().replace("_", "-") for p in listed if p.startswith("pip:")}

def outside_tree(p):
    p = os.path.normpath(p)
    return os.path.isabs(p) and not p.startswith((src + "/", build + "/", "/tmp/")) and os.path.exists(p)

used = {}  # path -> why it is used
python = ""
for line in open(os.path.join(work, "ninja-deps")):
    if line.startswith("    "):
        p = os.path.normpath(line.strip())
        if outside_tree(p):
            used.setdefault(p, "a header the compiler read")
# A program the cache found counts when the build runs it (it is named in the ninja files): CMake
# also records tools it merely saw on this machine (an LTO archiver, a linker the compiler driver
# never calls), and those are not dependencies. Libraries and headers always count.
ninja_text = ""
for f in ("build.ninja", os.path.join("CMakeFiles", "rules.ninja")):
    if os.path.exists(os.path.join(build, f)):
        ninja_text += open(os.path.join(build, f), errors="replace").read()
cache_entry = re.compile(r"^([A-Za-z0-9_]+):(FILEPATH|PATH)=(.+)$")
for line in open(os.path.join(build, "CMakeCache.txt")):
    m = cache_entry.match(line.strip())
    if m and outside_tree(m.group(3)) and os.path.isfile(m.group(3)):
        p = m.group(3)
        program = os.access(p, os.X_OK) and not re.search(r"\.(so|a)(\.[0-9.]+)?$", p)
        if not program or p in ninja_text:
            used.setdefault(os.path.normpath(p), "CMake cache entry " + m.group(1))
    if m and m.group(1) == "DIFFUSE_PYTHON":
        python = m.group(3)
for line in open(os.path.join(build, "build.ninja")):
    if line.strip().startswith("LINK_LIBRARIES ="):
        for tok in line.split("=", 1)[1].split():
            tok = tok.replace("-Wl,", "")
            if tok.startswith("/") and re.search(r"\.(so|a)(\.[0-9.]+)?$", tok) and outside_tree(tok):
                used.setdefault(os.path.normpath(tok), "a library on a link line")

problems = []

# Python modules that tests and examples import, and where the tests' interpreter finds them.
py_sources = []
for root, _, files in os.walk(os.path.join(src, "tests")):
    py_sources += [os.path.join(root, f) for f in files if f.endswith((".sh", ".py")) and "corpus" not in root]
ex = os.path.join(src, "examples", "python")
py_sources += [os.path.join(ex, f) for f in os.listdir(ex) if f.endswith(".py")]
modules = {}
imp = re.compile(r"^\s*(?:import|from)\s+([A-Za-z_][A-Za-z0-9_]*)")
for f in py_sources:
    for line in open(f, errors="replace"):
        m = imp.match(line)
        if m and not line.lstrip().startswith("from ."):
            modules.setdefault(m.group(1), os.path.relpath(f, src))
if not python or not os.access(python, os.X_OK):
    problems.append(f"the tests' Python (DIFFUSE_PYTHON in the CMake cache: '{python}') does not exist: "
                    "scripts/install-deps.sh makes it")
else:
    venv = os.path.dirname(os.path.dirname(python))
    for mod, where in sorted(modules.items()):
        r = subprocess.run([python, "-c", f"import {mod}, sys; print(getattr({mod}, '__file__', '') or '')"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            problems.append(f"Python module {mod} (imported by {where}) does not import in {python}")
            continue
        path = r.stdout.strip()
        if not path:
            continue  # built into the interpreter
        path = os.path.realpath(path)
        if path.startswith(os.path.realpath(venv) + "/"):
            dist = subprocess.run([python, "-c", "import importlib.metadata as m; "
                                   f"print(m.packages_distributions().get('{mod}', ['?'])[0])"],
                                  capture_output=True, text=True).stdout.strip()
            if dist.lower().replace("_", "-") not in pip_listed:
                problems.append(f"Python module {mod} (imported by {where}) comes from the pip package {dist}, "
                                f"which scripts/install-deps.sh does not install")
        else:
            used.setdefault(path, f"Python module {mod}, imported by {where}")

# Map every used file to its Debian package. dpkg records some files under /lib and others under
# /usr/lib (merged /usr), and a path may reach its file through symbolic links: try each spelling.
def spellings(p):
    out = [p, os.path.realpath(p)]
    for q in list(out):
        if q.startswith("/usr/lib/") or q.startswith("/usr/bin/") or q.startswith("/usr/sbin/"):
            out.append(q[4:])
        elif q.startswith(("/lib/", "/bin/", "/sbin/")):
            out.append("/usr" + q)
    return list(dict.fromkeys(out))

all_spellings = sorted({s for p in used for s in spellings(p)})
owner = {}
for i in range(0, len(all_spellings), 500):
    r = subprocess.run(["dpkg", "-S", *all_spellings[i:i + 500]], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if ": " in line and not line.startswith("diversion"):
            pkgs, path = line.split(": ", 1)
            owner[path] = [q.strip().split(":")[0] for q in pkgs.split(",")]

def from_cuda(p):
    return p.startswith("/usr/local/cuda") or ("/usr/local/" in p and "cudnn" in os.path.basename(p))

report = {}
for p, why in sorted(used.items()):
    pkgs = next((owner[s] for s in spellings(p) if s in owner), None)
    if pkgs is None:
        if not any(from_cuda(s) for s in spellings(p)):
            problems.append(f"{p} ({why}) belongs to no Debian package and is not part of the CUDA toolkit")
        continue
    if not any(q in closure for q in pkgs):
        report.setdefault(pkgs[0], (p, why))
for pkg, (p, why) in sorted(report.items()):
    problems.append(f"package {pkg} is not installed by scripts/install-deps.sh nor pulled in by what it "
                    f"installs (Depends only): {p}, {why}")

print(f"check-deps: {len(used)} files outside the tree ({len(modules)} Python modules), "
      f"{len(closure)} packages in install-deps.sh's Depends closure")
if problems:
    for q in problems:
        print("check-deps: MISSING:", q)
    print("check-deps: FAILED: add the package to scripts/install-deps.sh (or stop using it)")
    sys.exit(1)
print("check-deps: every file the build and the tests use comes from what scripts/install-deps.sh installs")
PY
