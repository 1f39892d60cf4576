#!/usr/bin/env bash
# ctest's fuzz.seeds: make_fuzz_seeds (the program that writes the checkpoint, config and
# diffusers seeds of tests/corpus) must still run, and every file it writes must be in the
# committed corpus, which tests/models/corpus_test.cpp checks file by file (ok_* accepted, bad_*
# refused). A seed the program stopped writing, or a program that no longer runs after a change
# to the trainers or the formats, fails here instead of at the next regeneration.
# Usage: check_fuzz_seeds.sh MAKE_FUZZ_SEEDS CORPUS_DIR
set -euo pipefail
prog=${1:?usage: check_fuzz_seeds.sh MAKE_FUZZ_SEEDS CORPUS_DIR}
corpus=${2:?usage: check_fuzz_seeds.sh MAKE_FUZZ_SEEDS CORPUS_DIR}
out=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-seeds.XXXXXX")
trap 'rm -rf "$out"' EXIT
"$prog" "$out" > "$out.log" 2>&1 || { cat "$out.log"; rm -f "$out.log"; echo "make_fuzz_seeds failed" >&2; exit 1; }
rm -f "$out.log"
missing=$(cd "$out" && find . -type f | sort | while read -r f; do [[ -f "$corpus/$f" ]] || echo "$f"; done)
written=$(cd "$out" && find . -type f | wc -l)
if [[ -n $missing ]]; then
  echo "make_fuzz_seeds writes seeds that tests/corpus does not hold (run it on tests/corpus and commit them):" >&2
  echo "$missing" >&2
  exit 1
fi
echo "make_fuzz_seeds wrote $written seeds, all in $corpus"
