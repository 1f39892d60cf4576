#!/usr/bin/env bash
# tests/capi/embed_examples.sh BUILD_DIR SOURCE_DIR PYTHON: the installed package, used as a user would
# (ctest entry capi.embed_examples, label cpu; cmake/DiffusePackage.cmake).
#
#  1. `cmake --install` the build into a temporary prefix. The shared library's soname is
#     libdiffuse.so.0 and it exports diffuse_* and nothing else.
#  2. A checkpoint from a two-step training run of a very small class-conditional UNet, through
#     the installed CLI; then `diffuse sample` of it into cli.png.
#  3. examples/embed_c, configured out of tree with find_package(diffuse) against the prefix: its
#     PNG for the same checkpoint, sampler, steps, count and seed must equal cli.png byte for byte.
#  4. The same C program built by hand with pkg-config (diffuse.pc): the same PNG again.
#  5. examples/embed_cpp (the C++ API from the static library, with a user-written denoiser),
#     which checks its own samples.
#  6. examples/python/embed_ctypes.py through ctypes with a NumPy denoiser, and its PNG of the
#     checkpoint = cli.png.
# PYTHON is the interpreter scripts/install-deps.sh provisions (.venv/bin/python: Debian's python3
# with Debian's NumPy and the safetensors package); without it, or without those modules, the
# test fails: a missing install step is a failure, never a skip.
# Exit 77 (skipped) only when the installed CLI lacks `train` or `sample`.
set -euo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
python=${3:?usage: embed_examples.sh BUILD_DIR SOURCE_DIR PYTHON}
work=$(mktemp -d "${TMPDIR:-/tmp}/diffuse-embed.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
start=$SECONDS
step() { printf '[embed %3ds] %s\n' $((SECONDS - start)) "$*"; }
fail() { echo "embed_examples: FAILED: $*" >&2; exit 1; }
[[ -x "$python" ]] || fail "no Python interpreter at $python: run scripts/install-deps.sh, which makes it"
"$python" -c 'import numpy, safetensors' ||
  fail "$python lacks NumPy or safetensors: run scripts/install-deps.sh, which installs them"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
# The examples are held to the same standard as the tree: warnings are errors.
c_strict=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS=-Werror)
cxx_strict=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS=-Werror)

step "cmake --install $build --prefix $prefix"
cmake --install "$build" --prefix "$prefix" >"$work/install.log" || { cat "$work/install.log"; fail "install"; }
so=$(find "$prefix" -name 'libdiffuse.so.0' | head -n 1)
[[ -n "$so" ]] || fail "no libdiffuse.so.0 under $prefix"
libdir=$(dirname "$so")
for f in "$prefix/include/diffuse/diffuse.h" "$prefix/include/diffuse/models/diffusion/sampler.h" \
         "$libdir/libdiffuse.a" "$libdir/libdiffuse.so" "$libdir/cmake/diffuse/diffuseConfig.cmake" \
         "$libdir/cmake/diffuse/diffuseConfigVersion.cmake" "$libdir/pkgconfig/diffuse.pc" "$prefix/bin/diffuse"; do
  [[ -e "$f" ]] || fail "the package lacks $f"
done

step "libdiffuse.so.0: soname and exported symbols"
readelf -d "$so" | grep -q 'SONAME.*\[libdiffuse\.so\.0\]' || fail "soname of $so is not libdiffuse.so.0"
# nm prints versioned names as name@@DIFFUSE_0; the version node itself is an absolute symbol.
extra=$(nm -D --defined-only "$so" | awk '{print $NF}' | sed 's/@.*//' | grep -v -e '^diffuse_' -e '^DIFFUSE_0$' || true)
[[ -z "$extra" ]] || fail "libdiffuse.so.0 exports more than the C API: $(echo "$extra" | head -n 20 | tr '\n' ' ')"
count=$(nm -D --defined-only "$so" | awk '{print $NF}' | grep -c '^diffuse_')
echo "  $count diffuse_* functions, nothing else"

cli=$prefix/bin/diffuse
if ! "$cli" train --help >/dev/null 2>&1 || ! "$cli" sample --help >/dev/null 2>&1; then
  echo "embed_examples: skipped: the installed CLI has no 'train' or 'sample' command yet"
  exit 77
fi

step "a checkpoint: diffuse train, 2 steps of a small class-conditional UNet"
# lr 0.02 without warm-up and EMA decay 0 (EMA = live weights): two steps move the zero-initialised
# output layer far enough that the samples depend on the weights, so the comparisons below mean
# something.
"$cli" train --preset tiny --model '{"base_channels": 8, "channel_mult": [1, 2], "attention_resolutions": [], "groups": 4}' \
  --class-cond --objective v --steps 2 --batch 4 --lr 0.02 --warmup 0 --ema-decay 0 --sample-count 1 \
  --sample-steps 1 --seed 3 --device cpu --out "$work/run" >"$work/train.log" 2>&1 || { cat "$work/train.log"; fail "diffuse train"; }
ckpt=$work/run/checkpoint.safetensors
[[ -f "$ckpt" ]] || fail "diffuse train wrote no $ckpt"

step "the checkpoint in the safetensors package's reader (what PyTorch users load it with)"
"$python" - "$ckpt" <<'PY' || fail "the safetensors package does not read $ckpt as documented"
import json, sys
from safetensors import safe_open
path = sys.argv[1]
# framework "np": the same reader PyTorch users call with "pt", without needing PyTorch here.
for fw in ["np"]:
    with safe_open(path, framework=fw) as f:
        meta, keys = f.metadata(), set(f.keys())
        assert meta["format"] == "diffuse-checkpoint-1", meta.get("format")
        unet = json.loads(meta["unet"])
        assert json.loads(meta["config"])["objective"] == "v"
        base = unet["base_channels"]
        # docs/models.md: NHWC convolution weights (Cout, KH, KW, Cin); live weights under model.,
        # EMA under ema., AdamW moments under opt.m. / opt.v.
        want = {"model.conv_in.weight": (base, 3, 3, 1), "ema.conv_in.weight": (base, 3, 3, 1),
                "opt.m.conv_in.weight": (base, 3, 3, 1), "model.label_emb.weight": (11, 4 * base)}
        for name, shape in want.items():
            assert name in keys, name
            t = f.get_tensor(name)
            assert tuple(t.shape) == shape, (name, tuple(t.shape), shape)
            assert str(t.dtype).endswith("float32"), (name, t.dtype)
        step = f.get_tensor("trainer.state")
        assert int(step[0]) == 2 and int(meta["step"]) == 2
        n = sum(1 for k in keys if k.startswith("model."))
        assert n == sum(1 for k in keys if k.startswith("ema.") and k != "ema.num_updates"), "model/ema names differ"
    print(f"  {fw}: {len(keys)} tensors, {n} parameters, names and shapes as documented")
PY

# One set of sampling settings for every program below.
sample_args=(--steps 4 --seed 11 --upscale 2 --device cpu --no-clip)
step "diffuse sample -> cli.png"
"$cli" sample "$ckpt" -n 6 --grid "$work/cli.png" "${sample_args[@]}" >"$work/sample.log" 2>&1 ||
  { cat "$work/sample.log"; fail "diffuse sample"; }

step "examples/embed_c: find_package(diffuse), out of tree"
cmake -S "$src/examples/embed_c" -B "$work/embed_c" "${generator[@]}" "${c_strict[@]}" -DCMAKE_PREFIX_PATH="$prefix" \
  >"$work/embed_c.cfg.log" 2>&1 || { cat "$work/embed_c.cfg.log"; fail "configure embed_c"; }
cmake --build "$work/embed_c" >"$work/embed_c.build.log" 2>&1 || { cat "$work/embed_c.build.log"; fail "build embed_c"; }
"$work/embed_c/embed_c" "$ckpt" "$work/c.png" --count 6 "${sample_args[@]}"
cmp "$work/cli.png" "$work/c.png" || fail "embed_c's PNG differs from diffuse sample's"
echo "  c.png == cli.png"

step "examples/embed_c again, built with pkg-config"
pcflags=$(PKG_CONFIG_PATH="$libdir/pkgconfig" pkg-config --cflags --libs diffuse)
# shellcheck disable=SC2086
cc -std=c99 -Wall -Wextra -Wpedantic -Werror "$src/examples/embed_c/main.c" $pcflags -Wl,-rpath,"$libdir" \
  -o "$work/embed_c_pc"
"$work/embed_c_pc" "$ckpt" "$work/pc.png" --count 6 "${sample_args[@]}" >/dev/null
cmp "$work/cli.png" "$work/pc.png" || fail "the pkg-config build's PNG differs from diffuse sample's"
echo "  pc.png == cli.png"

step "examples/embed_cpp: the C++ API from the static library, a user-written denoiser"
cmake -S "$src/examples/embed_cpp" -B "$work/embed_cpp" "${generator[@]}" "${cxx_strict[@]}" -DCMAKE_PREFIX_PATH="$prefix" \
  >"$work/embed_cpp.cfg.log" 2>&1 || { cat "$work/embed_cpp.cfg.log"; fail "configure embed_cpp"; }
cmake --build "$work/embed_cpp" >"$work/embed_cpp.build.log" 2>&1 ||
  { cat "$work/embed_cpp.build.log"; fail "build embed_cpp"; }
"$work/embed_cpp/embed_cpp" || fail "embed_cpp"

step "examples/python/embed_ctypes.py: ctypes and a NumPy denoiser"
"$python" "$src/examples/python/embed_ctypes.py" --lib "$so" --checkpoint "$ckpt" --png "$work/py.png" --count 6 \
  "${sample_args[@]}" || fail "embed_ctypes.py"
cmp "$work/cli.png" "$work/py.png" || fail "embed_ctypes.py's PNG differs from diffuse sample's"
echo "  py.png == cli.png"
step "done"
