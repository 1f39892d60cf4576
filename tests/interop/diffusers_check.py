#!/usr/bin/env python3
"""diffusers UNet2DModel folders in and out of diffuse, checked against diffusers itself.

    diffusers_check.py --cli build/diffuse --lib build/libdiffuse.so.0 [--work DIR]

For several small UNet2DModels with random weights (DDPM-style with attention at one resolution;
ADM-style scale-shift norm with ResBlock resampling and 8-channel heads; class-conditional with
4-channel heads at every level; google/ddpm-cifar10-32's configuration, GroupNorm eps 1e-6 and
bottom/right downsampling padding included, at a quarter of its width), saved with save_pretrained
and imported with `diffuse import-diffusers`, it checks:
  - the forward pass: diffuse (diffuse_model_predict, the C API) against diffusers in f32, both
    measured against diffusers in f64;
  - DDIM sampling from the same x_T: diffusers' DDIMScheduler loop against diffuse_sample with
    the ddim sampler and leading spacing, with and without clipping x0;
  - the round trip: export-diffusers loads in UNet2DModel.from_pretrained with bit-identical
    tensors, and importing the export gives a bit-identical checkpoint;
  - refusals: an unsupported block type, key value or schedule, a missing and a garbled weights
    file each fail with a message naming the file and key, a non-zero exit and no output.
A missing module (torch, diffusers) is a failure, not a skip: install them with
scripts/install-deps.sh. Runs in well under a minute on two cores.
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
import safetensors.torch  # noqa: F401  (diffusers calls safetensors.torch.save_file without importing it)
from safetensors.numpy import load_file

c_float_p = ctypes.POINTER(ctypes.c_float)
c_int64_p = ctypes.POINTER(ctypes.c_int64)
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


def diffuse_predict(lib, model, x_nchw, steps, labels):
    n = x_nchw.shape[0]
    x = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1), dtype=np.float32)
    # Step k is continuous time (k + 1) / 1000 (make_denoiser maps it back to k); the steps used
    # are 125 m - 1, whose times m / 8 are exact in float.
    t = np.array([(k + 1) / 1000 for k in steps], dtype=np.float32)
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
        for i, (name, (kwargs, sched, cond)) in enumerate(MODELS.items()):
            run_model(a, lib, work, name, kwargs, sched, cond, seed=10 + i)
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
        forward(lib, model, m, name, kwargs, cond, seed)
        ddim(lib, model, m, name, kwargs, sched_cfg, cond, seed)
    finally:
        lib.diffuse_model_free(model)
    round_trip(a, work, name, m, ckpt)
    # The imported checkpoint samples like a trained one.
    png = os.path.join(work, name + ".png")
    r = run_cli(a.cli, "sample", ckpt, "--sampler", "ddim", "--steps", "4", "-n", "2", "--grid", png,
                "--device", "cpu")
    check(r.returncode == 0 and os.path.exists(png), f"{name}: diffuse sample on the imported checkpoint")


def forward(lib, model, m, name, kwargs, cond, seed):
    g = torch.Generator().manual_seed(seed)
    C, S = kwargs["in_channels"], kwargs["sample_size"]
    steps = [124, 999, 499, 249]
    x = torch.randn(len(steps), C, S, S, generator=g)
    labels = torch.tensor([0, 3, 4, 1]) if cond else None
    with torch.no_grad():
        ref32 = m(x, torch.tensor(steps), class_labels=labels).sample.numpy()
        m64 = make_model(kwargs, seed).double()
        ref64 = m64(x.double(), torch.tensor(steps), class_labels=labels).sample.numpy()
    got = diffuse_predict(lib, model, x.numpy(), steps, None if labels is None else labels.numpy())
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
    for clip in (False, True) if name in ("adm", "ddpm-cifar10") else (False,):
        sch = DDIMScheduler(**ddim_cfg, clip_sample=clip, set_alpha_to_one=True, timestep_spacing="leading")
        sch.set_timesteps(steps)
        x = xT.clone()
        with torch.no_grad():
            for t in sch.timesteps:
                out = m(x, t, class_labels=labels).sample
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
    DDIMScheduler.from_pretrained(out)  # the scheduler config loads too
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
        ("schedule", None, lambda s: s.__setitem__("beta_schedule", "scaled_linear"), None,
         ["scheduler_config.json", "beta_schedule", "scaled_linear"]),
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
