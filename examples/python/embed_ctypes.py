#!/usr/bin/env python3
"""Drive diffuse's shared library (libdiffuse.so.0, the C API) from Python with ctypes.

A NumPy function is the denoiser: the exact one of Gaussian data, so the samples can be checked
against the data's mean and standard deviation. With --checkpoint it also samples a trained model
and writes a PNG grid, the same file `diffuse sample` writes for the same settings.

    python3 embed_ctypes.py --lib <prefix>/lib/libdiffuse.so.0 [--checkpoint ckpt --png out.png]

Only the standard library and NumPy are needed. docs/embedding.md explains the API.
"""
import argparse
import ctypes
import ctypes.util
import os
import sys

import numpy as np

c_float_p = ctypes.POINTER(ctypes.c_float)
c_int64_p = ctypes.POINTER(ctypes.c_int64)
# int (*)(void* user_data, const float* x, const float* t, const int64_t* labels, int64_t n, float* out)
DENOISE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, c_float_p, c_float_p, c_int64_p, ctypes.c_int64, c_float_p)

STATUS = ["DIFFUSE_OK", "DIFFUSE_ERR_INVALID_ARGUMENT", "DIFFUSE_ERR_IO", "DIFFUSE_ERR_UNSUPPORTED",
          "DIFFUSE_ERR_CALLBACK", "DIFFUSE_ERR_OUT_OF_MEMORY", "DIFFUSE_ERR_INTERNAL"]


class DiffuseError(RuntimeError):
    pass


def load_library(path):
    path = path or os.environ.get("DIFFUSE_LIBRARY") or ctypes.util.find_library("diffuse")
    if not path:
        sys.exit("embed_ctypes: libdiffuse not found; pass --lib <prefix>/lib/libdiffuse.so.0")
    lib = ctypes.CDLL(path)
    h = ctypes.c_void_p  # every handle is an opaque pointer
    sigs = {
        "diffuse_last_error": (ctypes.c_char_p, []),
        "diffuse_version": (ctypes.c_char_p, []),
        "diffuse_model_load": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint, ctypes.POINTER(h)]),
        "diffuse_model_free": (None, [h]),
        "diffuse_model_image_shape": (ctypes.c_int, [h, c_int64_p, c_int64_p, c_int64_p]),
        "diffuse_schedule_create": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_int64, ctypes.POINTER(h)]),
        "diffuse_schedule_from_model": (ctypes.c_int, [h, ctypes.POINTER(h)]),
        "diffuse_schedule_free": (None, [h]),
        "diffuse_schedule_alpha_sigma": (ctypes.c_int, [h, ctypes.c_double, ctypes.POINTER(ctypes.c_double),
                                                        ctypes.POINTER(ctypes.c_double)]),
        "diffuse_sampler_create": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(h)]),
        "diffuse_sampler_free": (None, [h]),
        "diffuse_sampler_set_steps": (ctypes.c_int, [h, ctypes.c_int64]),
        "diffuse_sampler_set_clip": (ctypes.c_int, [h, ctypes.c_int]),
        "diffuse_sampler_set_batch": (ctypes.c_int, [h, ctypes.c_int64]),
        "diffuse_sample": (ctypes.c_int, [h, h, h, ctypes.c_int64, ctypes.c_uint64, c_int64_p, c_float_p, c_float_p,
                                          ctypes.c_size_t]),
        "diffuse_sample_callback": (ctypes.c_int, [h, h, DENOISE_FN, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                                   ctypes.c_int64, ctypes.c_int64, ctypes.c_uint64, c_int64_p,
                                                   c_float_p, c_float_p, ctypes.c_size_t]),
        "diffuse_ddim_invert_callback": (ctypes.c_int, [h, h, DENOISE_FN, ctypes.c_void_p, ctypes.c_int64,
                                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, c_float_p,
                                                        c_int64_p, c_float_p, ctypes.c_size_t]),
        "diffuse_write_png_grid": (ctypes.c_int, [ctypes.c_char_p, c_float_p, ctypes.c_int64, ctypes.c_int64,
                                                  ctypes.c_int64, ctypes.c_int64, ctypes.c_int]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def check(lib, status):
    """Every call returns a status; turn a failure into an exception with the library's message."""
    if status != 0:
        name = STATUS[status] if 0 <= status < len(STATUS) else str(status)
        raise DiffuseError(f"{name}: {lib.diffuse_last_error().decode()}")


def fptr(a):
    return a.ctypes.data_as(c_float_p)


def gaussian_denoiser(lib, schedule, mu, s):
    """E[eps | z_t] for data N(mu, s^2) per channel, as a C callback. NumPy views wrap the
    library's buffers, which are valid only during the call."""
    per = mu.size
    levels = {}  # t -> (alpha_t, sigma_t): a sampler step hands every row the same t

    def level(t):
        if t not in levels:
            alpha, sigma = ctypes.c_double(), ctypes.c_double()
            check(lib, lib.diffuse_schedule_alpha_sigma(schedule, t, ctypes.byref(alpha), ctypes.byref(sigma)))
            levels[t] = (alpha.value, sigma.value)
        return levels[t]

    def denoise(_user_data, x, t, _labels, n, out):
        try:
            z = np.ctypeslib.as_array(x, shape=(n, per))
            ts = np.ctypeslib.as_array(t, shape=(n,))
            o = np.ctypeslib.as_array(out, shape=(n, per))
            a_s = np.array([level(float(ti)) for ti in ts])
            a, sg = a_s[:, :1], a_s[:, 1:]
            o[:] = sg * (z - a * mu) / (a * a * s * s + sg * sg)
            return 0
        except Exception as e:  # an exception must not cross into C: report it and abort the sampling
            print(f"denoiser failed: {e}", file=sys.stderr)
            return 1

    return DENOISE_FN(denoise)  # keep this object alive while the library may call it


def oracle_demo(lib):
    mu = np.array([0.5, -0.2, 0.1, 0.3])
    s = np.array([0.2, 0.4, 0.3, 0.1])
    n, C = 1024, mu.size
    schedule, sampler = ctypes.c_void_p(), ctypes.c_void_p()
    check(lib, lib.diffuse_schedule_create(b"cosine", 1000, ctypes.byref(schedule)))
    try:
        check(lib, lib.diffuse_sampler_create(b"ddim", ctypes.byref(sampler)))
        check(lib, lib.diffuse_sampler_set_steps(sampler, 50))
        check(lib, lib.diffuse_sampler_set_clip(sampler, 0))
        check(lib, lib.diffuse_sampler_set_batch(sampler, n))
        denoise = gaussian_denoiser(lib, schedule, mu, s)
        x = np.empty((n, 1, 1, C), dtype=np.float32)
        check(lib, lib.diffuse_sample_callback(sampler, schedule, denoise, None, n, 1, 1, C, 3, None, None, fptr(x),
                                               x.size))
        m, sd = x.reshape(n, C).mean(0), x.reshape(n, C).std(0, ddof=1)
        print("ddim, 50 steps, NumPy Gaussian denoiser:")
        print("  mean", np.round(m, 3), "want", mu)
        print("  std ", np.round(sd, 3), "want", s)
        # 5 standard errors of the mean (s / sqrt(1024)) and of the standard deviation
        # (s / sqrt(2 * 1024)), plus 0.01 for the 50-step discretisation.
        ok = np.all(np.abs(m - mu) < 5 * s / np.sqrt(n) + 0.01) and np.all(np.abs(sd - s) < 5 * s / np.sqrt(2 * n) + 0.01)

        # DDIM inversion and back: the deterministic sampler's two directions, each with an
        # O(1/steps) error, so more steps than for sampling.
        check(lib, lib.diffuse_sampler_set_steps(sampler, 500))
        z = np.empty_like(x)
        back = np.empty_like(x)
        check(lib, lib.diffuse_ddim_invert_callback(sampler, schedule, denoise, None, n, 1, 1, C, fptr(x), None,
                                                    fptr(z), z.size))
        check(lib, lib.diffuse_sample_callback(sampler, schedule, denoise, None, n, 1, 1, C, 0, None, fptr(z),
                                               fptr(back), back.size))
        err = float(np.abs(back - x).max())
        print(f"  invert then sample again: max |x - x'| = {err:.2e}")
        ok = ok and err < 2e-2  # as tests/diffusion/sampler_test.cpp at 500 steps

        # A wrong call comes back as a status and a message, never as a crash.
        bad = ctypes.c_void_p()
        try:
            check(lib, lib.diffuse_sampler_create(b"dpm3", ctypes.byref(bad)))
            ok = False
        except DiffuseError as e:
            print("  an unknown sampler:", e)
        return ok
    finally:
        lib.diffuse_sampler_free(sampler)
        lib.diffuse_schedule_free(schedule)


def checkpoint_demo(lib, args):
    model, schedule, sampler = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
    check(lib, lib.diffuse_model_load(args.checkpoint.encode(), args.device.encode(), 0, ctypes.byref(model)))
    try:
        hw = [ctypes.c_int64() for _ in range(3)]
        check(lib, lib.diffuse_model_image_shape(model, *[ctypes.byref(v) for v in hw]))
        H, W, C = (v.value for v in hw)
        check(lib, lib.diffuse_schedule_from_model(model, ctypes.byref(schedule)))
        check(lib, lib.diffuse_sampler_create(args.sampler.encode(), ctypes.byref(sampler)))
        check(lib, lib.diffuse_sampler_set_steps(sampler, args.steps))
        check(lib, lib.diffuse_sampler_set_clip(sampler, 0 if args.no_clip else 1))
        x = np.empty((args.count, H, W, C), dtype=np.float32)
        check(lib, lib.diffuse_sample(sampler, schedule, model, args.count, args.seed, None, None, fptr(x), x.size))
        check(lib, lib.diffuse_write_png_grid(args.png.encode(), fptr(x), args.count, H, W, C, args.upscale))
        print(f"wrote {args.png} ({args.count} images of {H}x{W}x{C}, {args.sampler}, {args.steps} steps, "
              f"seed {args.seed})")
    finally:
        lib.diffuse_sampler_free(sampler)
        lib.diffuse_schedule_free(schedule)
        lib.diffuse_model_free(model)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lib", help="path of libdiffuse.so.0 (else $DIFFUSE_LIBRARY, else the linker's search)")
    p.add_argument("--checkpoint", help="also sample this checkpoint into --png")
    p.add_argument("--png", default="samples.png")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--upscale", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-clip", action="store_true")
    args = p.parse_args()
    lib = load_library(args.lib)
    print("libdiffuse", lib.diffuse_version().decode())
    ok = oracle_demo(lib)
    if args.checkpoint:
        checkpoint_demo(lib, args)
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
