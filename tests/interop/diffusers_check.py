#!/usr/bin/env python3
"""diffusers UNet2DModel folders in and out of diffuse, checked against diffusers itself.

    diffusers_check.py --cli build/diffuse --lib build/libdiffuse.so.0 [--work DIR]

For several small UNet2DModels with random weights (DDPM-style with attention at one resolution;
ADM-style scale-shift norm with ResBlock resampling and 8-channel heads; class-conditional with
4-channel heads at every level; google/ddpm-cifar10-32's configuration, GroupNorm eps 1e-6 and
bottom/right downsampling padding included, at a quarter of its width; and one model for each
other scheduler configuration diffuse takes: scaled_linear betas, a linear beta range of its own
with x0 prediction, trained_betas with v prediction, the sigmoid schedule, fixed_large and a learned
variance), saved with save_pretrained and imported with `diffuse import-diffusers`, it checks:
  - the forward pass: diffuse (diffuse_model_predict, the C API) against diffusers in f32, both
    measured against diffusers in f64;
  - DDIM sampling from the same x_T: diffusers' DDIMScheduler loop against diffuse_sample with
    the ddim sampler and leading spacing, with and without clipping x0;
  - DDPM ancestral sampling from the same x_T and the same noise: DDPMScheduler with its own
    variance_type (fixed_small, fixed_large, learned_range), its noise replaced by the Philox
    normals diffuse draws (reproduced here, and checked against diffuse's own draws), against
    diffuse_sample with the ddpm sampler, which takes the variance from the checkpoint; and the
    other fixed variance must land measurably further away;
  - the round trip: export-diffusers loads in UNet2DModel.from_pretrained with bit-identical
    tensors, and importing the export gives a bit-identical checkpoint; the scheduler config diffuse
    writes itself (the stored one removed from the checkpoint) gives DDPMScheduler the same betas,
    variance and prediction;
  - `diffuse train --schedule scaled_linear --beta-start --beta-end` and a config file's custom
    betas reach the checkpoint, and export-diffusers writes them back as diffusers reads them;
  - refusals: an unsupported block type, key value or schedule, betas out of range or of the wrong
    count, a missing and a garbled weights file each fail with a message naming the file and key, a
    non-zero exit and no output.
A missing module (torch, diffusers) is a failure, not a skip: install them with
scripts/install-deps.sh. Takes about two minutes of CPU time (two cores).
"""
import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.schedulers import scheduling_ddpm
import safetensors.torch  # noqa: F401  (diffusers calls safetensors.torch.save_file without importing it)
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

c_float_p = ctypes.POINTER(ctypes.c_float)
c_int64_p = ctypes.POINTER(ctypes.c_int64)
DENOISE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, c_float_p, c_float_p, c_int64_p, ctypes.c_int64, c_float_p)
failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what, flush=True)
    if not ok:
        failures.append(what)


def load_library(path):
    lib = ctypes.CDLL(path)
    h = ctypes.c_void_p
    sigs = {
        "diffuse_last_error": (ctypes.c_char_p, []),
        "diffuse_model_load": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint, ctypes.POINTER(h)]),
        "diffuse_model_free": (None, [h]),
        "diffuse_model_predict": (ctypes.c_int, [h, ctypes.c_int64, c_float_p, c_float_p, c_int64_p, c_float_p,
                                                 ctypes.c_size_t]),
        "diffuse_import_diffusers": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p]),
        "diffuse_schedule_create": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_int64, ctypes.POINTER(h)]),
        "diffuse_schedule_free": (None, [h]),
        "diffuse_sample_callback": (ctypes.c_int, [h, h, DENOISE, h, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                                   ctypes.c_int64, ctypes.c_uint64, c_int64_p, c_float_p, c_float_p,
                                                   ctypes.c_size_t]),
        "diffuse_sampler_create": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(h)]),
        "diffuse_sampler_free": (None, [h]),
        "diffuse_sampler_set_steps": (ctypes.c_int, [h, ctypes.c_int64]),
        "diffuse_sampler_set_clip": (ctypes.c_int, [h, ctypes.c_int]),
        "diffuse_sampler_set_spacing": (ctypes.c_int, [h, ctypes.c_char_p]),
        "diffuse_sample": (ctypes.c_int, [h, h, h, ctypes.c_int64, ctypes.c_uint64, c_int64_p, c_float_p, c_float_p,
                                          ctypes.c_size_t]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def call(lib, status):
    if status != 0:
        raise RuntimeError(f"diffuse status {status}: {lib.diffuse_last_error().decode()}")


def fptr(a):
    return a.ctypes.data_as(c_float_p)


# The small UNet of the scheduler configurations below (channels and labels added there).
SMALL = dict(sample_size=16, block_out_channels=(16, 32), layers_per_block=1,
             down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
             attention_head_dim=None, norm_num_groups=8)

# name -> (UNet2DModel kwargs, scheduler config, labels)
MODELS = {
    # DDPM (Ho et al.): [sin, cos] time features, plain ResBlocks, conv resampling, one attention
    # level (16x16), one head per block.
    "ddpm": (dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(16, 32, 32), layers_per_block=1,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
                  norm_num_groups=8, flip_sin_to_cos=False, freq_shift=1),
             dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000,
                  prediction_type="epsilon"), False),
    # ADM: scale-shift norm, ResBlock up/down, attention at 14 and 7 with 8 channels per head
    # (4 and 6 heads), the cosine schedule.
    "adm": (dict(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(16, 32, 48), layers_per_block=1,
                 down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
                 downsample_type="resnet", upsample_type="resnet", resnet_time_scale_shift="scale_shift",
                 attn_norm_num_groups=8, attention_head_dim=8, norm_num_groups=8),
            dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000, prediction_type="epsilon"), False),
    # Class-conditional, attention at both levels with 4 channels per head, v prediction.
    "heads": (dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                   down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"), attention_head_dim=4, norm_num_groups=4,
                   num_class_embeds=5),
              dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000,
                   prediction_type="v_prediction"), True),
    # google/ddpm-cifar10-32 (diffusers' conversion of DDPM's CIFAR-10 model) as its config.json
    # has it, block_out_channels (128, 256, 256, 256) and 32 groups cut to a quarter: 2 blocks per
    # level, attention at 16x16, GroupNorm eps 1e-6, downsample_padding 0 (a zero row at the
    # bottom and a zero column at the right, then an unpadded stride-2 conv). Its scheduler too.
    "ddpm-cifar10": (dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64, 64),
                          layers_per_block=2,
                          down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                          attention_head_dim=None, norm_num_groups=8, norm_eps=1e-6, downsample_padding=0,
                          flip_sin_to_cos=False, freq_shift=1, act_fn="silu", center_input_sample=False,
                          time_embedding_type="positional", mid_block_scale_factor=1),
                     dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000,
                          prediction_type="epsilon", clip_sample=True, variance_type="fixed_large"), False),
    # The scheduler configurations beyond DDPM's and the cosine, each on a small UNet (16x16, two
    # levels, attention at 8x8). Stable Diffusion's scaled_linear betas (linear in sqrt(beta)).
    "scaled": (dict(SMALL, in_channels=3, out_channels=3),
               dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                    prediction_type="epsilon", clip_sample=False), False),
    # Linear betas over a range of its own (not DDPM's scaled by 1000 / T), x0 prediction, beta_t as
    # the DDPM variance.
    "range": (dict(SMALL, in_channels=1, out_channels=1),
              dict(beta_schedule="linear", beta_start=2e-4, beta_end=0.03, num_train_timesteps=400,
                   prediction_type="sample", variance_type="fixed_large"), False),
    # Explicit trained_betas (quadratic in the step, as no named schedule is), v prediction,
    # fixed_large, class labels.
    "trained": (dict(SMALL, in_channels=3, out_channels=3, num_class_embeds=5),
                dict(trained_betas=(5e-4 + 0.06 * (np.arange(200) / 199) ** 2).tolist(), num_train_timesteps=200,
                     prediction_type="v_prediction", variance_type="fixed_large"), True),
    # GeoDiff's sigmoid schedule, which diffuse imports as its list of betas.
    "sigmoid": (dict(SMALL, in_channels=3, out_channels=3),
                dict(beta_schedule="sigmoid", beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000,
                     prediction_type="epsilon"), False),
    # A learned variance (improved DDPM): twice the output channels, variance_type learned_range.
    "learned": (dict(SMALL, in_channels=3, out_channels=6),
                dict(beta_schedule="linear", num_train_timesteps=1000, prediction_type="epsilon",
                     variance_type="learned_range"), False),
}

# DDPMScheduler's keys that DDIMScheduler does not take (the DDIM loop sets clip_sample itself).
DDPM_ONLY = ("clip_sample", "variance_type")


def make_model(kwargs, seed):
    torch.manual_seed(seed)
    m = UNet2DModel(**kwargs)
    with torch.no_grad():
        # PyTorch's default init, plus GroupNorm gains and shifts away from 1 and 0 so that they
        # are checked too.
        for name, p in m.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return m.eval()


def diffuse_predict(lib, model, x_nchw, steps, labels, T):
    n = x_nchw.shape[0]
    x = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1), dtype=np.float32)
    # Step k is continuous time (k + 1) / T (make_denoiser maps it back to k); the steps used are
    # m T / 8 - 1, whose times m / 8 are exact in float.
    t = np.array([(k + 1) / T for k in steps], dtype=np.float32)
    out = np.empty_like(x)
    lab = None if labels is None else np.ascontiguousarray(labels, dtype=np.int64)
    call(lib, lib.diffuse_model_predict(model, n, fptr(x), fptr(t),
                                        None if lab is None else lab.ctypes.data_as(c_int64_p), fptr(out), out.size))
    return out.transpose(0, 3, 1, 2)


def run_cli(cli, *args):
    return subprocess.run([cli, *args], capture_output=True, text=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--work")
    a = ap.parse_args()
    torch.set_num_threads(2)
    lib = load_library(a.lib)
    work = a.work or tempfile.mkdtemp(prefix="diffuse-diffusers.")
    os.makedirs(work, exist_ok=True)
    try:
        check_philox(lib)
        for i, (name, (kwargs, sched, cond)) in enumerate(MODELS.items()):
            run_model(a, lib, work, name, kwargs, sched, cond, seed=10 + i)
        train_cli(a, work)
        refusals(a, lib, work)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    return 0


def run_model(a, lib, work, name, kwargs, sched_cfg, cond, seed):
    m = make_model(kwargs, seed)
    src = os.path.join(work, name)
    # A pipeline's layout: unet/ and scheduler/.
    m.save_pretrained(os.path.join(src, "unet"))
    DDPMScheduler(**sched_cfg).save_pretrained(os.path.join(src, "scheduler"))
    ckpt = os.path.join(work, name + ".safetensors")
    r = run_cli(a.cli, "import-diffusers", src, ckpt)
    check(r.returncode == 0, f"{name}: diffuse import-diffusers ({r.stdout.strip()}{r.stderr.strip()})")
    if r.returncode != 0:
        return
    # The C API's import writes the same checkpoint.
    ckpt_c = os.path.join(work, name + ".capi.safetensors")
    call(lib, lib.diffuse_import_diffusers(src.encode(), ckpt_c.encode()))
    t1, t2 = load_file(ckpt), load_file(ckpt_c)
    check(t1.keys() == t2.keys() and all(np.array_equal(t1[k], t2[k]) for k in t1),
          f"{name}: the C API's import equals the CLI's")

    model = ctypes.c_void_p()
    call(lib, lib.diffuse_model_load(ckpt.encode(), b"cpu", 0, ctypes.byref(model)))
    try:
        forward(lib, model, m, name, kwargs, sched_cfg.get("num_train_timesteps", 1000), cond, seed)
        ddim(lib, model, m, name, kwargs, sched_cfg, cond, seed)
        ddpm(lib, model, m, name, kwargs, sched_cfg, cond, seed)
    finally:
        lib.diffuse_model_free(model)
    round_trip(a, work, name, m, ckpt)
    own_scheduler(a, work, name, sched_cfg, ckpt)
    # The imported checkpoint samples like a trained one.
    png = os.path.join(work, name + ".png")
    r = run_cli(a.cli, "sample", ckpt, "--sampler", "ddim", "--steps", "4", "-n", "2", "--grid", png,
                "--device", "cpu")
    check(r.returncode == 0 and os.path.exists(png), f"{name}: diffuse sample on the imported checkpoint")


def forward(lib, model, m, name, kwargs, T, cond, seed):
    g = torch.Generator().manual_seed(seed)
    C, S = kwargs["in_channels"], kwargs["sample_size"]
    steps = [T // 8 - 1, T - 1, T // 2 - 1, T // 4 - 1]
    x = torch.randn(len(steps), C, S, S, generator=g)
    labels = torch.tensor([0, 3, 4, 1]) if cond else None
    with torch.no_grad():
        ref32 = m(x, torch.tensor(steps), class_labels=labels).sample.numpy()
        m64 = make_model(kwargs, seed).double()
        ref64 = m64(x.double(), torch.tensor(steps), class_labels=labels).sample.numpy()
    got = diffuse_predict(lib, model, x.numpy(), steps, None if labels is None else labels.numpy(), T)
    # A learned variance's channels follow the prediction's; diffuse_model_predict gives the
    # prediction (ddpm() below checks the variance through sampling).
    ref32, ref64 = ref32[:, :C], ref64[:, :C]
    err_ref = np.abs(ref32 - ref64).max()
    err = np.abs(got - ref64).max()
    scale = np.abs(ref64).max()
    # Both are f32 runs of the same network, with different summation orders (and convolution
    # algorithms); each differs from the f64 result by rounding alone. diffuse may be up to 4x
    # further off than PyTorch's own f32 run (a different algorithm may round differently, not
    # more than that), with a floor of 1e-6 of the output's scale for runs where PyTorch happens
    # to land very close.
    tol = max(4 * err_ref, 1e-6 * scale)
    check(err <= tol, f"{name}: forward max |diffuse - f64| = {err:.3g} (diffusers f32: {err_ref:.3g}, "
                      f"output scale {scale:.3g}, tolerance {tol:.3g})")


def ddim(lib, model, m, name, kwargs, sched_cfg, cond, seed):
    C, S = kwargs["in_channels"], kwargs["sample_size"]
    n, steps = 1, 5
    g = torch.Generator().manual_seed(seed + 100)
    xT = torch.randn(n, C, S, S, generator=g)
    labels = torch.tensor([4]) if cond else None
    # Unclipped the two must agree everywhere; clipped, also where x0 leaves [-1, 1] (for ADM, and
    # for DDPM's CIFAR-10 model, whose scheduler clips).
    ddim_cfg = {k: v for k, v in sched_cfg.items() if k not in DDPM_ONLY}
    if ddim_cfg.get("beta_schedule") == "sigmoid":  # DDPMScheduler's alone: DDIMScheduler takes its betas
        ddim_cfg["trained_betas"] = DDPMScheduler(**sched_cfg).betas.tolist()
    for clip in (False, True) if name in ("adm", "ddpm-cifar10") else (False,):
        sch = DDIMScheduler(**ddim_cfg, clip_sample=clip, set_alpha_to_one=True, timestep_spacing="leading")
        sch.set_timesteps(steps)
        x = xT.clone()
        with torch.no_grad():
            for t in sch.timesteps:
                out = m(x, t, class_labels=labels).sample[:, :C]
                # diffuse's DDIM step recomputes eps from the clipped x0 (use_clipped_model_output).
                x = sch.step(out, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        ref = x.numpy()
        smp = ctypes.c_void_p()
        call(lib, lib.diffuse_sampler_create(b"ddim", ctypes.byref(smp)))
        try:
            call(lib, lib.diffuse_sampler_set_steps(smp, steps))
            call(lib, lib.diffuse_sampler_set_clip(smp, int(clip)))
            call(lib, lib.diffuse_sampler_set_spacing(smp, b"leading"))
            z = np.ascontiguousarray(xT.numpy().transpose(0, 2, 3, 1))
            out = np.empty_like(z)
            lab = None if labels is None else np.ascontiguousarray(labels.numpy(), dtype=np.int64)
            call(lib, lib.diffuse_sample(smp, None, model, n, 0, None if lab is None else lab.ctypes.data_as(c_int64_p),
                                         fptr(z), fptr(out), out.size))
        finally:
            lib.diffuse_sampler_free(smp)
        got = out.transpose(0, 3, 1, 2)
        err = np.abs(got - ref).max()
        scale = np.abs(ref).max()
        # Each step's x0 is (z - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar): the forward error
        # above (1e-6 of the scale) grows up to 1 / sqrt(alpha_bar) = 26x at the first step (800
        # with 5 leading steps, linear betas), and diffusers' alphas_cumprod are f32 products
        # where diffuse's are f64 (1e-6 relative): 1e-4 of the output's scale.
        tol = 1e-4 * max(scale, 1.0)
        check(err <= tol, f"{name}: DDIM {steps} steps, clip {clip}: max |diffuse - diffusers| = {err:.3g} "
                          f"(scale {scale:.3g}, tolerance {tol:.3g})")


# Philox4x32-10 and the normal transform of core/philox.h, in NumPy: the noise diffuse's samplers
# draw, so diffusers' DDPMScheduler can be given the same. f32 operations round as the C++ ones do;
# fma is emulated in f64 (the exact product, then two roundings), which can differ from a true fma
# by an ulp in rare cases, far below the tolerances here.
def _fma(a, b, c):
    return (np.float64(a) * np.float64(b) + np.float64(c)).astype(np.float32)


def _log_unit(u):
    f32 = np.float32
    b = u.view(np.uint32)
    e = ((b >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int32) - 127
    m = ((b & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000)).view(np.float32)
    big = m > f32(1.41421356)
    m = np.where(big, m * f32(0.5), m).astype(np.float32)
    e = np.where(big, e + 1, e)
    f = m + f32(-1.0)
    s = f / (f + f32(2.0))
    z = s * s
    p = _fma(z, f32(1) / f32(11), f32(1) / f32(9))
    for k in (7, 5, 3):
        p = _fma(z, p, f32(1) / f32(k))
    p = _fma(z, p, f32(1.0))
    lnm = (f32(2.0) * s) * p
    return _fma(e.astype(np.float32), f32(0.693147180559945), lnm)


def _sincos_turns(x):
    f32 = np.float32
    q = (x * f32(4.0) + f32(0.5)).astype(np.int32)
    y = x + q.astype(np.float32) * f32(-0.25)
    t = y * f32(6.28318530717958648)
    t2 = t * t
    sp = _fma(t2, f32(1) / f32(362880), f32(-1) / f32(5040))
    sp = _fma(t2, sp, f32(1) / f32(120))
    sp = _fma(t2, sp, f32(-1) / f32(6))
    s = _fma(t * t2, sp, t)
    cp = _fma(t2, f32(-1) / f32(3628800), f32(1) / f32(40320))
    cp = _fma(t2, cp, f32(-1) / f32(720))
    cp = _fma(t2, cp, f32(1) / f32(24))
    cp = _fma(t2, cp, f32(-0.5))
    c = _fma(t2, cp, f32(1.0))
    r = q & 3
    sin = np.select([r == 0, r == 1, r == 2], [s, c, -s], -c)
    cos = np.select([r == 0, r == 1, r == 2], [c, -s, -c], s)
    return sin.astype(np.float32), cos.astype(np.float32)


def philox_normal(seed, offset, count):
    """Elements 0 .. count-1 of diffuse's normal stream (seed, offset) (core/philox.h)."""
    mask = np.uint64(0xFFFFFFFF)
    blocks = np.arange((count + 3) // 4, dtype=np.uint64)
    c = [blocks & mask, blocks >> np.uint64(32), np.full_like(blocks, offset & 0xFFFFFFFF),
         np.full_like(blocks, offset >> 32)]
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64((seed >> 32) & 0xFFFFFFFF)
    for r in range(10):
        if r > 0:
            k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
        p0, p1 = np.uint64(0xD2511F53) * c[0], np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & mask]
    words = [w.astype(np.uint32) for w in c]
    out = np.empty((len(blocks), 4), dtype=np.float32)
    for p in range(2):
        u1 = ((words[2 * p] >> np.uint32(8)) + np.uint32(1)).astype(np.float32) * np.float32(1 / 16777216)
        u2 = (words[2 * p + 1] >> np.uint32(8)).astype(np.float32) * np.float32(1 / 16777216)
        rad = np.sqrt(np.float32(-2.0) * _log_unit(u1))
        sin, cos = _sincos_turns(u2)
        out[:, 2 * p], out[:, 2 * p + 1] = rad * cos, rad * sin
    return out.reshape(-1)[:count]


def check_philox(lib):
    """philox_normal against diffuse's own draws: the z_T a sampler draws from its seed (stream 0)."""
    n, h, w, c, seed = 3, 4, 4, 3, 77
    seen = []

    def denoise(_, x, t, labels, rows, out):
        if not seen:
            seen.append(np.ctypeslib.as_array(x, shape=(rows * h * w * c,)).copy())
        np.ctypeslib.as_array(out, shape=(rows * h * w * c,))[:] = 0
        return 0
    cb = DENOISE(denoise)
    sch, smp = ctypes.c_void_p(), ctypes.c_void_p()
    call(lib, lib.diffuse_schedule_create(b"linear", 1000, ctypes.byref(sch)))
    call(lib, lib.diffuse_sampler_create(b"ddim", ctypes.byref(smp)))
    try:
        call(lib, lib.diffuse_sampler_set_steps(smp, 1))
        out = np.empty(n * h * w * c, dtype=np.float32)
        call(lib, lib.diffuse_sample_callback(smp, sch, cb, None, n, h, w, c, seed, None, None, fptr(out), out.size))
    finally:
        lib.diffuse_sampler_free(smp)
        lib.diffuse_schedule_free(sch)
    want = philox_normal(seed, 0, n * h * w * c)
    err = np.abs(seen[0] - want).max()
    check(err <= 1e-6, f"Philox normals reproduced in NumPy: max |diffuse - here| = {err:.3g} over {want.size}")


def ddpm(lib, model, m, name, kwargs, sched_cfg, cond, seed):
    C, S = kwargs["in_channels"], kwargs["sample_size"]
    n, steps, noise_seed = 1, 5, 1000 + seed
    g = torch.Generator().manual_seed(seed + 200)
    xT = torch.randn(n, C, S, S, generator=g)
    labels = torch.tensor([2]) if cond else None
    own = sched_cfg.get("variance_type", "fixed_small")

    def diffusers_run(variance_type):
        sch = DDPMScheduler(**dict(sched_cfg, variance_type=variance_type, clip_sample=True, clip_sample_range=1.0,
                                   timestep_spacing="leading"))
        sch.set_timesteps(steps)
        # The noise of step k is diffuse's Philox stream (seed, k + 1); diffusers draws it for every
        # step but the last (t = 0), as diffuse does.
        noise = iter([philox_normal(noise_seed, k + 1, n * S * S * C).reshape(n, S, S, C).transpose(0, 3, 1, 2)
                      for k in range(steps)])

        def given_noise(shape, generator=None, device=None, dtype=None, layout=None):
            return torch.from_numpy(np.ascontiguousarray(next(noise))).to(dtype).reshape(shape)
        saved = scheduling_ddpm.randn_tensor
        scheduling_ddpm.randn_tensor = given_noise
        try:
            x = xT.clone()
            with torch.no_grad():
                for t in sch.timesteps:
                    x = sch.step(m(x, t, class_labels=labels).sample, t, x).prev_sample
        finally:
            scheduling_ddpm.randn_tensor = saved
        return x.numpy()

    ref = diffusers_run(own)
    smp = ctypes.c_void_p()
    call(lib, lib.diffuse_sampler_create(b"ddpm", ctypes.byref(smp)))
    try:
        call(lib, lib.diffuse_sampler_set_steps(smp, steps))
        call(lib, lib.diffuse_sampler_set_clip(smp, 1))
        call(lib, lib.diffuse_sampler_set_spacing(smp, b"leading"))
        z = np.ascontiguousarray(xT.numpy().transpose(0, 2, 3, 1))
        out = np.empty_like(z)
        lab = None if labels is None else np.ascontiguousarray(labels.numpy(), dtype=np.int64)
        lab_p = None if lab is None else lab.ctypes.data_as(c_int64_p)
        call(lib, lib.diffuse_sample(smp, None, model, n, noise_seed, lab_p, fptr(z), fptr(out), out.size))
    finally:
        lib.diffuse_sampler_free(smp)
    got = out.transpose(0, 3, 1, 2)
    err = np.abs(got - ref).max()
    # As DDIM's, with x0 clipped at every step, so the scale is 1: the first step's x0 carries the
    # forward error (up to 3e-6 here) times 1 / sqrt(alpha_bar), 50 for DDPM's betas at t = 800,
    # and the f32 against f64 alpha_bar (1e-6 relative); the noise's f32 draws agree to an ulp.
    # Measured: up to 5e-5.
    tol = 3e-4 * max(np.abs(ref).max(), 1.0)
    what = (f"{name}: DDPM {steps} steps, variance {own}, same noise: max |diffuse - diffusers| = {err:.3g} "
            f"(tolerance {tol:.3g})")
    if own in ("fixed_small", "fixed_large"):
        # The other fixed variance must be told apart: diffuse took the checkpoint's.
        other = "fixed_large" if own == "fixed_small" else "fixed_small"
        err_other = np.abs(got - diffusers_run(other)).max()
        check(err <= tol and err_other > 100 * tol, what + f"; against {other}: {err_other:.3g}")
    else:
        check(err <= tol, what)


def own_scheduler(a, work, name, sched_cfg, ckpt):
    """export-diffusers of the checkpoint without the scheduler config it was imported with: the
    scheduler_config.json diffuse writes from its own training config."""
    with safe_open(ckpt, "np") as f:
        meta = f.metadata()
    meta.pop("diffusers_scheduler", None)
    bare = os.path.join(work, name + ".bare.safetensors")
    save_file(load_file(ckpt), bare, metadata=meta)
    out = os.path.join(work, name + ".bare-export")
    r = run_cli(a.cli, "export-diffusers", bare, out)
    if r.returncode != 0:
        check(False, f"{name}: export-diffusers without the stored scheduler config ({r.stderr.strip()})")
        return
    mine, theirs = DDPMScheduler.from_pretrained(out), DDPMScheduler(**sched_cfg)
    rel = ((mine.betas.double() - theirs.betas.double()).abs() / theirs.betas.double()).max().item()
    same = all(mine.config[k] == theirs.config[k] for k in ("variance_type", "prediction_type", "num_train_timesteps"))
    # trained_betas and the ends are written as diffuse holds them (f64); diffusers rounds the betas
    # to f32 (6e-8), and diffuse computes the sigmoid's in f64.
    check(same and rel <= 1e-6, f"{name}: diffuse's own scheduler_config.json gives DDPMScheduler the same betas "
                                f"(max relative difference {rel:.3g}), variance_type and prediction_type")
    DDIMScheduler.from_pretrained(out)


def write_idx(folder, n, size):
    """n random size x size grey images and their labels in IDX files; the dataset spec."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(5)
    img, lab = os.path.join(folder, "images-idx3-ubyte"), os.path.join(folder, "labels-idx1-ubyte")
    with open(img, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + size.to_bytes(4, "big") * 2)
        f.write(rng.integers(0, 256, n * size * size, dtype=np.uint8).tobytes())
    with open(lab, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes(i % 2 for i in range(n)))
    return f"idx:{img},{lab}"


def train_cli(a, work):
    """`diffuse train` with the schedule flags and a config file's betas; the checkpoint's export."""
    data = write_idx(os.path.join(work, "idx"), 4, 4)
    model = json.dumps({"base_channels": 8, "channel_mult": [1], "groups": 2, "attention_resolutions": []})
    common = ["--dataset", data, "--model", model, "--steps", "1", "--batch", "2", "--sample-every", "0",
              "--checkpoint-every", "0", "--sample-count", "1", "--sample-steps", "1", "--device", "cpu"]
    runs = {
        "scaled_linear": (["--schedule", "scaled_linear", "--timesteps", "50", "--beta-start", "0.001", "--beta-end",
                           "0.05"], None,
                          dict(beta_schedule="scaled_linear", beta_start=0.001, beta_end=0.05, num_train_timesteps=50)),
        "custom": ([], dict(schedule="custom", timesteps=20, variance="beta",
                            betas=(0.01 + 0.02 * np.arange(20) / 19).tolist()),
                   dict(trained_betas=(0.01 + 0.02 * np.arange(20) / 19).tolist(), num_train_timesteps=20,
                        variance_type="fixed_large")),
    }
    for tag, (flags, config, want) in runs.items():
        out = os.path.join(work, "train-" + tag)
        args = ["train", *common, *flags, "--out", out]
        if config is not None:
            cfg = os.path.join(work, f"train-{tag}.json")
            with open(cfg, "w") as f:
                json.dump(config, f)
            args += ["--config", cfg]
        r = run_cli(a.cli, *args)
        if r.returncode != 0:
            check(False, f"diffuse train ({tag}): {r.stderr.strip()[-300:]}")
            continue
        exp = os.path.join(work, f"train-{tag}.export")
        r = run_cli(a.cli, "export-diffusers", os.path.join(out, "checkpoint.safetensors"), exp)
        if r.returncode != 0:
            check(False, f"export-diffusers of the trained {tag} checkpoint: {r.stderr.strip()}")
            continue
        mine, theirs = DDPMScheduler.from_pretrained(exp), DDPMScheduler(**want)
        check(torch.equal(mine.betas, theirs.betas) and mine.config["variance_type"] == theirs.config["variance_type"],
              f"diffuse train ({tag}): the exported scheduler has the trained betas and variance exactly")
    # A beta outside (0, 1) is refused, naming the key, and leaves nothing behind.
    out = os.path.join(work, "train-refused")
    r = run_cli(a.cli, "train", *common, "--beta-end", "1.5", "--out", out)
    # The refusal names the setting as the user gave it (the flag; a config file's key reads beta_end).
    check(r.returncode != 0 and ("--beta-end" in r.stderr or "beta_end" in r.stderr) and "(0, 1)" in r.stderr
          and not os.path.exists(out),
          f"diffuse train --beta-end 1.5 is refused: {r.stderr.strip()}")


def round_trip(a, work, name, m, ckpt):
    out = os.path.join(work, name + ".export")
    r = run_cli(a.cli, "export-diffusers", ckpt, out)
    check(r.returncode == 0, f"{name}: diffuse export-diffusers ({r.stdout.strip()}{r.stderr.strip()})")
    if r.returncode != 0:
        return
    back = UNet2DModel.from_pretrained(out)
    sd0, sd1 = m.state_dict(), back.state_dict()
    check(sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0),
          f"{name}: UNet2DModel.from_pretrained(export) has bit-identical tensors")
    keys = ("sample_size", "in_channels", "out_channels", "block_out_channels", "layers_per_block",
            "down_block_types", "up_block_types", "resnet_time_scale_shift", "flip_sin_to_cos", "freq_shift",
            "norm_num_groups", "num_class_embeds", "norm_eps", "downsample_padding")
    check(all(m.config[k] == back.config[k] or list(m.config[k]) == list(back.config[k]) for k in keys),
          f"{name}: the exported config.json describes the same model")
    # The scheduler config loads too (sigmoid betas in DDPMScheduler only).
    sched_class = DDPMScheduler if json.load(open(os.path.join(out, "scheduler_config.json"))).get(
        "beta_schedule") == "sigmoid" else DDIMScheduler
    sched_class.from_pretrained(out)
    again = os.path.join(work, name + ".again.safetensors")
    r = run_cli(a.cli, "import-diffusers", out, again)
    t1, t2 = load_file(ckpt), load_file(again)
    check(r.returncode == 0 and t1.keys() == t2.keys() and
          all(t1[k].dtype == t2[k].dtype and t1[k].tobytes() == t2[k].tobytes() for k in t1),
          f"{name}: import, export, import gives a bit-identical checkpoint ({len(t1)} tensors)")


def refusals(a, lib, work):
    base = os.path.join(work, "ddpm")

    def variant(tag, edit_config=None, edit_sched=None, weights=None):
        d = os.path.join(work, "bad-" + tag)
        shutil.copytree(base, d)
        for sub, edit in (("unet/config.json", edit_config), ("scheduler/scheduler_config.json", edit_sched)):
            if edit:
                p = os.path.join(d, sub)
                cfg = json.load(open(p))
                edit(cfg)
                json.dump(cfg, open(p, "w"))
        w = os.path.join(d, "unet", "diffusion_pytorch_model.safetensors")
        if weights == "missing":
            os.remove(w)
        elif weights == "garbled":
            with open(w, "r+b") as f:
                f.write(b"\xff" * 64)
        return d

    cases = [
        ("block", lambda c: c["down_block_types"].__setitem__(0, "SkipDownBlock2D"), None, None,
         ["config.json", "down_block_types[0]", "SkipDownBlock2D"]),
        ("eps", lambda c: c.__setitem__("norm_eps", 0), None, None, ["config.json", "norm_eps", "= 0"]),
        ("padding", lambda c: c.__setitem__("downsample_padding", 2), None, None,
         ["config.json", "downsample_padding", "= 2"]),
        ("shift", lambda c: c.__setitem__("resnet_time_scale_shift", "spatial"), None, None,
         ["config.json", "resnet_time_scale_shift", "spatial"]),
        ("schedule", None, lambda s: s.__setitem__("beta_schedule", "exponential"), None,
         ["scheduler_config.json", "beta_schedule", "exponential"]),
        ("beta-end", None, lambda s: s.__setitem__("beta_end", 1.25), None,
         ["scheduler_config.json", "beta_end", "1.25", "(0, 1)"]),
        ("betas-count", None, lambda s: s.__setitem__("trained_betas", [0.01] * 999), None,
         ["scheduler_config.json", "trained_betas", "999", "num_train_timesteps is 1000"]),
        ("betas-range", None, lambda s: s.__setitem__("trained_betas", [0.01] * 3 + [0] + [0.01] * 996), None,
         ["scheduler_config.json", "trained_betas[3]", "= 0", "(0, 1)"]),
        ("betas-type", None, lambda s: s.__setitem__("trained_betas", [0.01] * 5 + ["x"] + [0.01] * 994), None,
         ["scheduler_config.json", "trained_betas[5]", "(0, 1)"]),
        ("zero-snr", None, lambda s: s.__setitem__("rescale_betas_zero_snr", True), None,
         ["scheduler_config.json", "rescale_betas_zero_snr", "alpha_bar 0"]),
        ("variance", None, lambda s: s.__setitem__("variance_type", "fixed_large_log"), None,
         ["scheduler_config.json", "variance_type", "fixed_large_log"]),
        ("missing", None, None, "missing", ["diffusion_pytorch_model.safetensors", "missing"]),
        ("garbled", None, None, "garbled", ["diffusion_pytorch_model.safetensors"]),
    ]
    for tag, ec, es, w, words in cases:
        d = variant(tag, ec, es, w)
        out = os.path.join(work, f"bad-{tag}.safetensors")
        r = run_cli(a.cli, "import-diffusers", d, out)
        msg = r.stderr.strip()
        check(r.returncode != 0 and all(x in msg for x in words) and not os.path.exists(out),
              f"refused ({tag}): exit {r.returncode}, no output, message: {msg}")
        status = lib.diffuse_import_diffusers(d.encode(), out.encode())
        check(status != 0 and not os.path.exists(out), f"refused ({tag}) through the C API too (status {status})")


if __name__ == "__main__":
    sys.exit(main())
