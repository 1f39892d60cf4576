#!/usr/bin/env python3
"""bench/torch_e2e.py: the PyTorch side of bench/e2e.

The same UNet presets as models/nn/unet.cpp (docs/models.md), layer for layer: the parameter
count is checked against diffuse's (35,746,307 for ddpm-cifar10, 7,278,401 for fmnist) before
anything is timed. Measures, on one GPU, with bf16 autocast and channels-last activations:

  train   one whole step: noising, forward, eps MSE, backward, clip_grad_norm_(1.0),
          AdamW (fused) and the EMA (torch._foreach_lerp_), as diffuse's DeviceTrainStep;
  sample  a DDPM ancestral run of --sample-steps steps at each --sample-batch, divided by the
          steps (one UNet forward under no_grad plus the update, noise from torch.randn);

each eager and under torch.compile (the model compiled; --compile-mode picks the mode), timed
with CUDA events after warm-up, the median of --iters. JSON with --json.

  python3 bench/torch_e2e.py [--preset ddpm-cifar10,fmnist] [--batch 128] [--sample-batch 256,1]
                             [--sample-steps 20] [--modes eager,compile] [--compile-mode default]
                             [--warmup 5] [--iters 30] [--json out.json] [--check-params]

Without a GPU it says so in one line and exits 0; --check-params builds the models on the cpu
and checks their parameter counts, and --check-twin FILE (with one --preset) loads the weights
that `bench/e2e --export-twin PRESET FILE` wrote and checks that this model's forward gives
diffuse's output on the same input (both on the cpu, no GPU needed).
"""
import argparse
import json
import math
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # the e2e.sh wrapper reports this; nothing to measure without torch
    print("torch_e2e: PyTorch is not installed (pip install torch); nothing measured")
    sys.exit(0)

# models/nn/unet.cpp UNetConfig::preset, with the expected parameter counts (docs/models.md).
PRESETS = {
    "ddpm-cifar10": dict(in_channels=3, image_size=32, ch=128, mult=(1, 2, 2, 2), blocks=2, attn=(16,),
                         heads=1, head_channels=-1, dropout=0.1, groups=32, scale_shift=False,
                         time_embedding="ddpm", params=35_746_307),
    "fmnist": dict(in_channels=1, image_size=28, ch=64, mult=(1, 2, 2), blocks=2, attn=(14, 7),
                   heads=1, head_channels=32, dropout=0.1, groups=32, scale_shift=True,
                   time_embedding="adm", params=7_278_401),
}


def timestep_embedding(t, dim, kind):
    """kernels/time_embedding.h: "ddpm" [sin, cos], exp(-ln(1e4) i / (half - 1)); "adm" [cos, sin], / half."""
    half = dim // 2
    shift = 1.0 if kind == "ddpm" else 0.0
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - shift))
    arg = t.float()[:, None] * freqs[None]
    first, second = (torch.sin(arg), torch.cos(arg)) if kind == "ddpm" else (torch.cos(arg), torch.sin(arg))
    emb = torch.cat([first, second], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """models/nn/layers.h ResBlock (no up/down resampling: the presets resample with convs)."""

    def __init__(self, cin, cout, emb, groups, dropout, scale_shift):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb_proj = nn.Linear(emb, 2 * cout if scale_shift else cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.scale_shift = scale_shift

    def forward(self, x, emb_act):
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(emb_act)[:, :, None, None]
        if self.scale_shift:
            s, b = e.chunk(2, dim=1)
            h = F.silu(self.norm2(h) * (1 + s) + b)
        else:
            h = F.silu(self.norm2(h + e))
        h = self.conv2(self.dropout(h))
        return (self.skip(x) if self.skip is not None else x) + h


class AttentionBlock(nn.Module):
    """x + proj(attention(qkv(GroupNorm(x)))), q | k | v along the channels, head h on [h D, (h+1) D)."""

    def __init__(self, ch, groups, heads, head_channels):
        super().__init__()
        self.heads = heads if heads > 0 and head_channels <= 0 else ch // head_channels
        self.norm = nn.GroupNorm(groups, ch, eps=1e-5)
        self.qkv = nn.Linear(ch, 3 * ch)
        self.proj = nn.Linear(ch, ch)

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, T, C): contiguous for channels-last x
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        split = lambda u: u.reshape(B, H * W, self.heads, C // self.heads).transpose(1, 2)
        a = F.scaled_dot_product_attention(split(q), split(k), split(v))
        a = a.transpose(1, 2).reshape(B, H * W, C)
        return x + self.proj(a).transpose(1, 2).reshape(B, C, H, W)


class UNet(nn.Module):
    """models/nn/unet.h: encoder, middle, decoder with skip concatenation, as UNet::UNet builds it."""

    def __init__(self, c):
        super().__init__()
        ch, E, g = c["ch"], 4 * c["ch"], c["groups"]
        self.c = c
        self.fc1, self.fc2 = nn.Linear(ch, E), nn.Linear(E, E)
        res = lambda i, o: ResBlock(i, o, E, g, c["dropout"], c["scale_shift"])
        att = lambda ch_: AttentionBlock(ch_, g, c["heads"], c["head_channels"])
        cur = c["mult"][0] * ch
        self.conv_in = nn.Conv2d(c["in_channels"], cur, 3, padding=1)
        skips, size = [cur], c["image_size"]
        self.down = nn.ModuleList()
        for i, m in enumerate(c["mult"]):
            level = nn.ModuleList()
            for _ in range(c["blocks"]):
                level.append(res(cur, m * ch))
                cur = m * ch
                level.append(att(cur) if size in c["attn"] else nn.Identity())
                skips.append(cur)
            if i + 1 < len(c["mult"]):
                level.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
                size //= 2
            self.down.append(level)
        self.mid1, self.mid_attn, self.mid2 = res(cur, cur), att(cur), res(cur, cur)
        self.up = nn.ModuleList()
        for i in reversed(range(len(c["mult"]))):
            level = nn.ModuleList()
            m = c["mult"][i]
            for _ in range(c["blocks"] + 1):
                level.append(res(cur + skips.pop(), m * ch))
                cur = m * ch
                level.append(att(cur) if size in c["attn"] else nn.Identity())
            if i > 0:
                level.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cur, cur, 3, padding=1)))
                size *= 2
            self.up.append(level)
        self.out_norm = nn.GroupNorm(g, cur, eps=1e-5)
        self.out_conv = nn.Conv2d(cur, c["in_channels"], 3, padding=1)

    def forward(self, x, t):
        emb = self.fc2(F.silu(self.fc1(timestep_embedding(t, self.c["ch"], self.c["time_embedding"]))))
        emb_act = F.silu(emb)
        h = self.conv_in(x)
        hs = [h]
        for level in self.down:
            for j in range(0, 2 * self.c["blocks"], 2):
                h = level[j + 1](level[j](h, emb_act))
                hs.append(h)
            if len(level) > 2 * self.c["blocks"]:
                h = level[-1](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb_act)), emb_act)
        for level in self.up:
            for j in range(0, 2 * (self.c["blocks"] + 1), 2):
                h = level[j + 1](level[j](torch.cat([h, hs.pop()], dim=1), emb_act))
            if len(level) > 2 * (self.c["blocks"] + 1):
                h = level[-1](h)
        return self.out_conv(F.silu(self.out_norm(h)))


def param_count(model):
    return sum(p.numel() for p in model.parameters())


def check_params(name):
    model = UNet(PRESETS[name])
    n = param_count(model)
    if n != PRESETS[name]["params"]:
        raise SystemExit(f"torch_e2e: {name} has {n:,} parameters here, {PRESETS[name]['params']:,} in diffuse: "
                         "the PyTorch model no longer matches models/nn/unet.cpp")
    return model, n


def read_safetensors(path):
    """name -> f32 tensor of a safetensors file (only f32 entries; header parsed by hand)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        if e["dtype"] != "F32":
            raise SystemExit(f"torch_e2e: {path}: {name} is {e['dtype']}, expected F32")
        a, b = e["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(e["shape"])
    return out


def torch_name(name, c):
    """A diffuse parameter name (docs/models.md) -> this module's name for the same tensor."""
    L, nb = len(c["mult"]), c["blocks"]
    parts = name.split(".")
    if parts[0] == "time":
        return ".".join(parts[1:])
    if parts[0] == "mid":
        return {"res1": "mid1", "attn": "mid_attn", "res2": "mid2"}[parts[1]] + "." + ".".join(parts[2:])
    if parts[0] in ("down", "up"):
        i = int(parts[1])
        level = i if parts[0] == "down" else L - 1 - i
        per = nb if parts[0] == "down" else nb + 1
        kind, rest = parts[2], parts[3:]
        if kind == "res":
            idx = 2 * int(rest[0])
            rest = rest[1:]
        elif kind == "attn":
            idx = 2 * int(rest[0]) + 1
            rest = rest[1:]
        else:  # downsample.conv / upsample.conv
            idx = 2 * per
            rest = rest[1:] if parts[0] == "down" else ["1"] + rest[1:]
        return ".".join([parts[0], str(level), str(idx)] + rest)
    return name


def check_twin(name, path):
    """Loads the weights diffuse wrote (bench/e2e --export-twin) into this module and compares the
    forward on the same input: the PyTorch model must compute what models/nn/unet.cpp computes."""
    c = PRESETS[name]
    model, _ = check_params(name)
    model.eval()
    st = read_safetensors(path)
    own = dict(model.named_parameters())
    loaded = 0
    with torch.no_grad():
        for key, value in st.items():
            if not key.startswith("model."):
                continue
            dst = own[torch_name(key[len("model."):], c)]
            src = value.permute(0, 3, 1, 2) if value.dim() == 4 else value  # conv (Cout,KH,KW,Cin) -> OIHW
            if dst.shape != src.shape:
                raise SystemExit(f"torch_e2e: {key}: {tuple(src.shape)} in diffuse, {tuple(dst.shape)} here")
            dst.copy_(src)
            loaded += 1
        if loaded != len(own):
            raise SystemExit(f"torch_e2e: {path} holds {loaded} of this model's {len(own)} parameters")
        x = st["x"].permute(0, 3, 1, 2)
        y = model(x, st["t"]).permute(0, 2, 3, 1)
    err = (y - st["y"]).abs().max().item() / st["y"].abs().max().item()
    # Both in f32 on the cpu, different summation orders: a few 1e-6 relative; a wrong layer is O(1).
    ok = err < 1e-4
    print(f"{name}: forward matches diffuse's to {err:.2e} of the output's scale" + ("" if ok else " (MISMATCH)"))
    if not ok:
        raise SystemExit(1)


def linear_abar(T=1000):
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def events_median_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        pairs.append((a, b))
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in pairs)


def bench_train(name, mode, args, dev):
    c = PRESETS[name]
    torch.manual_seed(0)
    model, _ = check_params(name)
    model = model.to(dev, memory_format=torch.channels_last).train()
    params = list(model.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True)
    fwd = torch.compile(model, mode=args.compile_mode) if mode == "compile" else model
    B, S = args.batch, c["image_size"]
    data = [(torch.rand(B, c["in_channels"], S, S, device=dev) * 2 - 1).contiguous(memory_format=torch.channels_last)
            for _ in range(4)]
    abar = linear_abar().to(dev)
    state = {"i": 0, "loss": None}

    def step():
        x = data[state["i"] % len(data)]
        state["i"] += 1
        t = torch.randint(0, 1000, (B,), device=dev)
        a = abar[t].sqrt().float().view(B, 1, 1, 1)
        s = (1 - abar[t]).sqrt().float().view(B, 1, 1, 1)
        eps = torch.randn_like(x)
        z = a * x + s * eps
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fwd(z, t.float())
        loss = F.mse_loss(out.float(), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1 - 0.999)
        state["loss"] = loss

    ms = events_median_ms(step, args.warmup + (3 if mode == "compile" else 0), args.iters)
    r = {"mode": mode, "batch": B, "median_ms": ms, "images_per_s": B / (ms * 1e-3), "loss": float(state["loss"])}
    print(f"  train   {mode:7s} batch {B:4d}: {ms:9.3f} ms/step {r['images_per_s']:10.1f} img/s")
    return r


def bench_sample(name, mode, B, args, dev):
    c = PRESETS[name]
    torch.manual_seed(0)
    model, _ = check_params(name)
    model = model.to(dev, memory_format=torch.channels_last).eval()
    fwd = torch.compile(model, mode=args.compile_mode) if mode == "compile" else model
    S, steps = c["image_size"], args.sample_steps
    abar = linear_abar()
    # DDPM ancestral on the linspace-respaced grid (grid_plan's ddpm coefficients, models/diffusion).
    idx = [round(i * 999 / (steps - 1)) for i in range(steps)][::-1] if steps > 1 else [999]
    plan = []
    for k, i in enumerate(idx):
        a_t = float(abar[i])
        a_s = float(abar[idx[k + 1]]) if k + 1 < len(idx) else 1.0
        beta = 1 - a_t / a_s
        c_x0 = beta * math.sqrt(a_s) / (1 - a_t)
        c_z = (1 - a_s) * math.sqrt(1 - beta) / (1 - a_t)
        std = math.sqrt(beta * (1 - a_s) / (1 - a_t)) if k + 1 < len(idx) else 0.0
        plan.append((torch.full((B,), float(i), device=dev), math.sqrt(a_t), math.sqrt(1 - a_t), c_x0, c_z, std))

    @torch.no_grad()
    def run():
        z = torch.randn(B, c["in_channels"], S, S, device=dev).contiguous(memory_format=torch.channels_last)
        for t, a, s, c_x0, c_z, std in plan:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                eps = fwd(z, t).float()
            x0 = ((z - s * eps) / a).clamp_(-1, 1)
            z = c_x0 * x0 + c_z * z
            if std > 0:
                z = z + std * torch.randn_like(z)
        return z

    warm = max(2, args.warmup // 2) + (2 if mode == "compile" else 0)
    run_ms = events_median_ms(run, warm, max(5, args.iters // 3))
    step_ms = run_ms / steps
    r = {"mode": mode, "batch": B, "steps": steps, "median_run_ms": run_ms, "median_step_ms": step_ms,
         "images_per_s": B / (run_ms * 1e-3), "image_steps_per_s": B / (step_ms * 1e-3)}
    print(f"  sample  {mode:7s} batch {B:4d}: {step_ms:9.3f} ms/step {r['image_steps_per_s']:10.1f} img-steps/s")
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="ddpm-cifar10,fmnist")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--sample-batch", default="256,1")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--compile-mode", default="default")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--json")
    p.add_argument("--check-params", action="store_true")
    p.add_argument("--check-twin", metavar="FILE", help="compare the forward with bench/e2e --export-twin's file")
    args = p.parse_args()
    presets = args.preset.split(",")
    for name in presets:
        if name not in PRESETS:
            raise SystemExit(f"torch_e2e: no PyTorch twin of preset '{name}' (known: {', '.join(PRESETS)})")
    if args.check_twin:
        if len(presets) != 1:
            raise SystemExit("torch_e2e: --check-twin needs one --preset")
        check_twin(presets[0], args.check_twin)
        return
    if args.check_params:
        for name in presets:
            print(f"{name}: {check_params(name)[1]:,} parameters, as in diffuse")
        return
    if not torch.cuda.is_available():
        print("torch_e2e: no GPU (torch.cuda.is_available() is False); nothing measured")
        return
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    props = torch.cuda.get_device_properties(dev)
    print(f"torch_e2e on {props.name}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    out = {"device": props.name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": " ".join(sys.argv), "compile_mode": args.compile_mode, "presets": []}
    modes = args.modes.split(",")
    for name in presets:
        _, n = check_params(name)
        print(f"{name}: {n:,} parameters")
        r = {"preset": name, "parameters": n, "train": [], "sample": []}
        for m in modes:
            r["train"].append(bench_train(name, m, args, dev))
        for b in (int(s) for s in args.sample_batch.split(",")):
            for m in modes:
                r["sample"].append(bench_sample(name, m, b, args, dev))
        out["presets"].append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
