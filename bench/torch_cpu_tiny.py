#!/usr/bin/python3
"""bench/torch_cpu_tiny.py: diffuse's `tiny` UNet in PyTorch, timed on the CPU the way
bench/cpu_train_step times diffuse, so the two can be compared in one run (bench/compare_cpu.sh).

    /usr/bin/python3 bench/torch_cpu_tiny.py [--steps 20] [--threads N] [--batch 64]
        [--sample-batch 256] [--sample-steps 50] [--mode eager|channels-last|compile]
        [--profile FILE] [--diffuse-json FILE] [--json FILE]

The model mirrors models/nn/unet.cpp and models/nn/layers.cpp layer for layer (docs/models.md,
"The UNet"): ADM time embedding ([cos, sin] of t, 16 wide) -> Linear(16, 64) -> SiLU ->
Linear(64, 64); SiLU(emb) once, shared by every block's projection; ResBlocks
GN+SiLU -> conv3x3 -> + emb_proj -> GN+SiLU -> conv3x3 (zero init), 1x1 skip where the channels
change, no scale-shift norm, no rescale, no dropout; single-head attention (GN, qkv Linear C->3C,
softmax(QK^T/sqrt(C))V, proj Linear zero init, residual) at 7x7 only; strided 3x3 conv down,
nearest 2x + 3x3 conv up; the decoder concatenates the encoder's skips; out = conv3x3(SiLU(GN)).
Channels 16/32/32, 8 groups, one block per level (two in the decoder): 280,177 parameters, and
--diffuse-json makes the run fail unless diffuse's model has exactly as many.

A training step (timed, data sampling not) is what `diffuse train` and cpu_train_step run:
forward, epsilon MSE, backward, clip_grad_norm 1.0, AdamW (lr 2e-4, no weight decay, as diffuse's
default), EMA 0.999 with diffuse's warm-up min(decay, (1+n)/(10+n)). Linear schedule, T = 1000.
Data: Fashion-MNIST from Debian's dataset-fashion-mnist (random images if it is absent; the
cost of a step does not depend on the pixel values). Sampling: DDIM (eta 0, x0 clipped) under
torch.no_grad(), timed after one untimed model call at the sampling batch (PyTorch's one-off
costs: oneDNN primitive creation, and for --mode compile the no-grad graph's compilation).

Modes: `eager` (PyTorch's default NCHW), `channels-last` (NHWC, diffuse's layout; the older flag
--channels-last says the same) and `compile` (NCHW, the model wrapped in torch.compile, default
inductor backend; compilation happens in the untimed warm-up steps and the warm-up sampling call).
--profile FILE runs torch.profiler over one training step and one sampling model call (after the
timed runs) and writes both tables of ops, by self CPU time, to FILE.
"""
import argparse
import gzip
import json
import math
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DIFFUSE_TINY_PARAMETERS = 280177  # docs/models.md, "Presets"
FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"

# The `tiny` preset (models/nn/unet.cpp, UNetConfig::preset).
TINY = dict(in_channels=1, out_channels=1, image_size=28, base_channels=16, channel_mult=(1, 2, 2),
            num_res_blocks=1, attention_resolutions=(7,), num_heads=1, groups=8)


def timestep_embedding(t, dim, max_period=10000.0):
    # ADM ordering [cos, sin], freq_i = exp(-ln(max_period) i / half) (kernels/time_embedding.cpp).
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def zero_(m):
    nn.init.zeros_(m.weight)
    nn.init.zeros_(m.bias)
    return m


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb_proj = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-5)
        self.conv2 = zero_(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb_act):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(emb_act)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.skip(x) if self.skip is not None else x) + h


class AttentionBlock(nn.Module):
    def __init__(self, ch, groups, heads):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch, eps=1e-5)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = zero_(nn.Linear(ch, ch))

    def forward(self, x):
        B, C, H, W = x.shape
        T, h, D = H * W, self.heads, C // self.heads
        a = self.norm(x).reshape(B, C, T).transpose(1, 2)  # (B, T, C), as diffuse's NHWC rows
        q, k, v = self.qkv(a).split(C, dim=2)  # q | k | v along the channels, as diffuse slices them
        q, k, v = (u.reshape(B, T, h, D).transpose(1, 2).reshape(B * h, T, D) for u in (q, k, v))
        p = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * (1.0 / math.sqrt(D)), dim=-1)
        o = torch.bmm(p, v).reshape(B, h, T, D).transpose(1, 2).reshape(B, T, C)
        return x + self.proj(o).transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Level(nn.Module):
    pass


class UNet(nn.Module):
    """models/nn/unet.cpp's UNet without the options `tiny` leaves off (labels, scale-shift,
    resblock_updown, rescale, learned sigma, dropout). Module names follow diffuse's parameter
    names (time.fc1, down.0.res.0.conv1, mid.attn, up.1.upsample.conv, out_conv, ...)."""

    def __init__(self, c):
        super().__init__()
        ch0, emb, g = c["base_channels"], 4 * c["base_channels"], c["groups"]
        self.base = ch0
        self.time = nn.Module()
        self.time.fc1 = nn.Linear(ch0, emb)
        self.time.fc2 = nn.Linear(emb, emb)
        ch = c["channel_mult"][0] * ch0
        self.conv_in = nn.Conv2d(c["in_channels"], ch, 3, padding=1)
        skips, size, L = [ch], c["image_size"], len(c["channel_mult"])
        attn_at = set(c["attention_resolutions"])
        self.down = nn.ModuleList()
        for i, m in enumerate(c["channel_mult"]):
            lvl = Level()
            lvl.res = nn.ModuleList()
            lvl.attn = nn.ModuleList() if size in attn_at else None
            for _ in range(c["num_res_blocks"]):
                lvl.res.append(ResBlock(ch, m * ch0, emb, g))
                ch = m * ch0
                if lvl.attn is not None:
                    lvl.attn.append(AttentionBlock(ch, g, c["num_heads"]))
                skips.append(ch)
            lvl.downsample = None
            if i + 1 < L:
                lvl.downsample = Downsample(ch)
                skips.append(ch)
                size //= 2
            self.down.append(lvl)
        self.mid = nn.Module()
        self.mid.res1 = ResBlock(ch, ch, emb, g)
        self.mid.attn = AttentionBlock(ch, g, c["num_heads"])
        self.mid.res2 = ResBlock(ch, ch, emb, g)
        levels = [None] * L
        for i in reversed(range(L)):  # built coarsest first, the order the skips pop
            m, lvl = c["channel_mult"][i], Level()
            lvl.res = nn.ModuleList()
            lvl.attn = nn.ModuleList() if size in attn_at else None
            for _ in range(c["num_res_blocks"] + 1):
                lvl.res.append(ResBlock(ch + skips.pop(), m * ch0, emb, g))
                ch = m * ch0
                if lvl.attn is not None:
                    lvl.attn.append(AttentionBlock(ch, g, c["num_heads"]))
            lvl.upsample = None
            if i > 0:
                lvl.upsample = Upsample(ch)
                size *= 2
            levels[i] = lvl
        assert not skips
        self.up = nn.ModuleList(levels)
        self.out_norm = nn.GroupNorm(g, ch, eps=1e-5)
        self.out_conv = zero_(nn.Conv2d(ch, c["out_channels"], 3, padding=1))

    def forward(self, x, t):
        emb = self.time.fc2(F.silu(self.time.fc1(timestep_embedding(t, self.base))))
        emb_act = F.silu(emb)
        h = self.conv_in(x)
        skips = [h]
        for lvl in self.down:
            for j, res in enumerate(lvl.res):
                h = res(h, emb_act)
                if lvl.attn is not None:
                    h = lvl.attn[j](h)
                skips.append(h)
            if lvl.downsample is not None:
                h = lvl.downsample(h)
                skips.append(h)
        h = self.mid.res2(self.mid.attn(self.mid.res1(h, emb_act)), emb_act)
        for lvl in reversed(self.up):
            for j, res in enumerate(lvl.res):
                h = res(torch.cat([h, skips.pop()], dim=1), emb_act)
                if lvl.attn is not None:
                    h = lvl.attn[j](h)
            if lvl.upsample is not None:
                h = lvl.upsample(h)
        return self.out_conv(F.silu(self.out_norm(h)))


def load_fashion_mnist(path):
    """(N, 1, 28, 28) uint8 from the IDX file, or None if it is absent. Kept as bytes (47 MB) and
    scaled per batch: as f32 the set would be 188 MB, which would swamp the peak-memory figure
    (cpu_train_step holds one random batch, no dataset)."""
    if not os.path.exists(path):
        return None
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051:
        sys.exit(f"torch_cpu_tiny: {path} is not an IDX image file (magic {magic})")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols).copy())


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def markdown_table(events, top):
    """The top ops by self CPU time as a markdown table, in the columns of diffuse's profile."""
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1
    lines = ["| op | calls | self ms | mean ms | share |", "| --- | ---: | ---: | ---: | ---: |"]
    for e in rows[:top]:
        ms = e.self_cpu_time_total / 1000
        lines.append(f"| {e.key} | {e.count} | {ms:.2f} | {ms / e.count:.3f} | {100 * e.self_cpu_time_total / total:.1f}% |")
    rest = sum(e.self_cpu_time_total for e in rows[top:])
    if rest:
        lines.append(f"| ({len(rows) - top} more ops) | | {rest / 1000:.2f} | | {100 * rest / total:.1f}% |")
    return f"{total / 1000:.1f} ms of self CPU time in all\n" + "\n".join(lines) + "\n"


def profile_tables(a, net, train_step, next_batch, fmt, ts):
    """torch.profiler over one training step and one sampling model call, both already warm; the
    tables (ops by self CPU time) go to a.profile."""
    from torch.profiler import ProfilerActivity, profile
    tables = []
    model_train = getattr(net, "_orig_mod", net)
    model_train.train()
    x = next_batch()
    with profile(activities=[ProfilerActivity.CPU]) as p:
        train_step(x)
    tables.append((f"training step, batch {a.batch}", p))
    model_train.eval()
    z = torch.randn(a.sample_batch, 1, 28, 28).contiguous(memory_format=fmt)
    with torch.no_grad():
        with profile(activities=[ProfilerActivity.CPU]) as p:
            net(z, torch.full((a.sample_batch,), float(ts[len(ts) // 2])))
    tables.append((f"sampling model call, batch {a.sample_batch}", p))
    with open(a.profile, "w") as f:
        f.write(f"torch {torch.__version__}, mode {a.mode}, {torch.get_num_threads()} threads\n")
        for title, p in tables:
            f.write(f"\n== {title}\n")
            f.write(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
            f.write("\n")
            f.write(markdown_table(p.key_averages(), 15))
    print(f"torch_cpu_tiny: profile written to {a.profile}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="timed training steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed first steps (cpu_train_step skips 3)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sample-batch", type=int, default=256)
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--mode", choices=("eager", "channels-last", "compile"), default="eager",
                    help="eager NCHW (default), eager NHWC (diffuse's layout), or torch.compile (NCHW)")
    ap.add_argument("--channels-last", action="store_true", help="the same as --mode channels-last")
    ap.add_argument("--profile", help="write torch.profiler's op tables (one training step, one sampling call) here")
    ap.add_argument("--diffuse-json", help="cpu_train_step's JSON: its parameter count must equal ours")
    ap.add_argument("--json", help="write the results here too")
    a = ap.parse_args()
    if a.channels_last:
        a.mode = "channels-last"
    a.channels_last = a.mode == "channels-last"

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rss_import = peak_rss_mib()
    model = UNet(TINY)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, tiny UNet: {n_params:,} parameters, {torch.get_num_threads()} threads")
    want = DIFFUSE_TINY_PARAMETERS
    if a.diffuse_json:
        with open(a.diffuse_json) as f:
            want = json.load(f)["parameters"]
    if n_params != want:
        sys.exit(f"torch_cpu_tiny: FAIL: {n_params} parameters here, diffuse's tiny has {want}: the models differ")
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    net = torch.compile(model) if a.mode == "compile" else model  # what the steps and the sampler call

    data = load_fashion_mnist(FMNIST)
    source = "fashion-mnist" if data is not None else "random (Fashion-MNIST not found)"
    if data is None:
        data = torch.randint(0, 256, (60000, 1, 28, 28), dtype=torch.uint8)
    data_mib = data.numel() / 2**20

    T = 1000
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    sqrt_ab, sqrt_1mab = abar.sqrt().float(), (1 - abar).sqrt().float()

    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, foreach=True)
    ema = [p.detach().clone() for p in params]
    ema_updates = 0
    model.train()
    ms = []
    gen = torch.Generator().manual_seed(1)

    def train_step(x):
        nonlocal ema_updates
        t = torch.randint(0, T, (a.batch,))
        eps = torch.randn_like(x)
        z = sqrt_ab[t].view(-1, 1, 1, 1) * x + sqrt_1mab[t].view(-1, 1, 1, 1) * eps
        loss = F.mse_loss(net(z, t), eps)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            d = min(0.999, (1 + ema_updates) / (10 + ema_updates))
            torch._foreach_mul_(ema, d)
            torch._foreach_add_(ema, params, alpha=1 - d)
            ema_updates += 1
        opt.zero_grad(set_to_none=True)

    def next_batch():
        idx = torch.randint(0, data.shape[0], (a.batch,), generator=gen)
        return (data[idx].float() / 127.5 - 1.0).contiguous(memory_format=fmt)

    for s in range(a.warmup + a.steps):
        x = next_batch()
        t0 = time.perf_counter()
        train_step(x)
        if s >= a.warmup:
            ms.append((time.perf_counter() - t0) * 1000)
    step_ms = statistics.median(ms)
    train_rss = peak_rss_mib()
    print(f"train  batch {a.batch}: {step_ms:.1f} ms/step (median of {len(ms)}), "
          f"{a.batch * 1000 / step_ms:.1f} images/s, peak RSS {train_rss:.0f} MiB (data: {source})")

    # DDIM (Song et al. 2021, eq. 12, eta 0) on diffuse's default grid: `sample_steps` steps
    # linearly spaced over 0..T-1 (spaced_timesteps, linspace), one model call each.
    model.eval()
    n = a.sample_steps
    ts = sorted({T - 1 if n == 1 else round((T - 1) * k / (n - 1)) for k in range(n)}, reverse=True)
    with torch.no_grad():  # warm-up: one model call at the sampling batch, untimed
        net(torch.randn(a.sample_batch, 1, 28, 28).contiguous(memory_format=fmt),
            torch.full((a.sample_batch,), float(ts[0])))
    t_start = time.perf_counter()
    with torch.no_grad():
        z = torch.randn(a.sample_batch, 1, 28, 28).contiguous(memory_format=fmt)
        for k, ti in enumerate(ts):
            ab = abar[ti].item()
            ab_next = abar[ts[k + 1]].item() if k + 1 < len(ts) else 1.0
            eps = net(z, torch.full((a.sample_batch,), float(ti)))
            x0 = ((z - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp_(-1, 1)
            eps = (z - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
            z = math.sqrt(ab_next) * x0 + math.sqrt(1 - ab_next) * eps
    sample_s = time.perf_counter() - t_start
    print(f"sample DDIM {len(ts)} steps, batch {a.sample_batch}: {sample_s:.2f} s, "
          f"{a.sample_batch / sample_s:.1f} images/s, peak RSS {peak_rss_mib():.0f} MiB")

    if a.profile:
        profile_tables(a, net, train_step, next_batch, fmt, ts)

    out = dict(framework=f"torch {torch.__version__}", mode=a.mode, parameters=n_params, threads=torch.get_num_threads(),
               batch=a.batch, steps=len(ms), channels_last=a.channels_last, data=source,
               train_ms_per_step=round(step_ms, 3), train_images_per_s=round(a.batch * 1000 / step_ms, 2),
               train_peak_rss_mib=round(train_rss, 1), sample_batch=a.sample_batch, sample_steps=len(ts),
               sample_seconds=round(sample_s, 3), sample_images_per_s=round(a.sample_batch / sample_s, 2),
               peak_rss_mib=round(peak_rss_mib(), 1), rss_after_import_mib=round(rss_import, 1),
               dataset_mib=round(data_mib, 1))
    print(json.dumps(out))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f)
            f.write("\n")


if __name__ == "__main__":
    main()
