#!/usr/bin/env python3
"""bench/torch_kernels.py: the PyTorch side of bench/kernels.

The same ops on the same shapes as bench/kernels.cpp, named alike (kernel and shape strings are
identical, so bench/kernels.sh can join the two JSON files row by row), in PyTorch as a user would
write them: bf16 channels-last activations, GroupNorm then SiLU, F.scaled_dot_product_attention
under each backend this PyTorch has (flash, efficient, cudnn, math), fused AdamW with a lerp EMA,
and so on. Each figure is the median of --iters runs after --warmup runs, each run timed alone
with CUDA events and preceded by an L2 flush (zeroing a buffer of twice the L2 size), as in
bench/kernels. Bytes and FLOPs use bench/kernels.cpp's formulas, so the GB/s columns compare.
Backward passes are timed alone: torch.autograd.grad on a kept graph (retain_graph=True).

  python3 bench/torch_kernels.py [--only SUBSTRING] [--warmup 10] [--iters 50] [--json out.json]

Without a GPU (or without torch) it says so in one line and exits 0.
"""
import argparse
import json
import math
import statistics
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("torch_kernels: PyTorch is not installed (pip install torch); nothing measured")
    sys.exit(0)

B16, F32 = 2, 4


class Timer:
    def __init__(self, warmup, iters, dev):
        props = torch.cuda.get_device_properties(dev)
        l2 = getattr(props, "L2_cache_size", 0) or (64 << 20)
        self.flush = torch.empty(max(2 * l2, 64 << 20), dtype=torch.uint8, device=dev)
        self.warmup, self.iters = warmup, iters

    def median_ms(self, fn):
        for _ in range(self.warmup):
            fn()
        torch.cuda.synchronize()
        pairs = []
        for _ in range(self.iters):
            self.flush.zero_()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            pairs.append((a, b))
        torch.cuda.synchronize()
        return statistics.median(a.elapsed_time(b) for a, b in pairs)


def rnd(shape, dtype, dev, lo=-1.0, hi=1.0):
    return (torch.rand(shape, device=dev) * (hi - lo) + lo).to(dtype)


def shape_str(*d):
    return "x".join(str(x) for x in d)


def cases(dev):
    """(kernel, shape, impl, bytes, flops, formula, fn) tuples; fn runs the op once."""
    out = []
    maps = [("cifar10", 128, 32, 32, 128, 32), ("cifar10", 128, 16, 16, 256, 32), ("64x64", 32, 64, 64, 128, 32)]
    images = [("cifar10", 128, 32 * 32 * 3), ("64x64", 32, 64 * 64 * 3)]

    for model, B, n in images:
        x, a, s = rnd((B, n), torch.float32, dev), rnd((B, 1), torch.float32, dev, 0.1, 1), rnd((B, 1), torch.float32, dev, 0.1, 1)

        def noise(x=x, a=a, s=s):
            eps = torch.randn_like(x)
            return a * x + s * eps, eps
        out.append(("noise_forward", f"{model} {shape_str(B, n)}", "torch", 3 * F32 * B * n + 2 * F32 * B, 0,
                    "12 B n + 8 B", noise))

    for B in (128, 32):
        dim, t = 512, rnd((B,), torch.float32, dev, 0, 999)

        def temb(t=t, dim=dim):
            half = dim // 2
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
            args = t[:, None] * freqs[None]
            return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        out.append(("timestep_embedding", shape_str(B, dim), "torch", F32 * B + F32 * B * dim, 0, "4 B + 4 B dim", temb))

    for model, B, H, W, C, G in maps:
        n = B * H * W * C
        x = rnd((B, C, H, W), torch.bfloat16, dev).contiguous(memory_format=torch.channels_last).requires_grad_()
        gamma = rnd((C,), torch.bfloat16, dev, 0.5, 1.5).requires_grad_()
        beta = rnd((C,), torch.bfloat16, dev).requires_grad_()
        dy = rnd((B, C, H, W), torch.bfloat16, dev).contiguous(memory_format=torch.channels_last)
        y = F.silu(F.group_norm(x, G, gamma, beta, 1e-5))
        shape = f"{model} {shape_str(B, H, W, C)} G{G}"
        out.append(("group_norm_silu_forward", shape, "torch", 2 * B16 * n, 0, "4 B H W C",
                    lambda x=x, g=gamma, b=beta, G=G: F.silu(F.group_norm(x.detach(), G, g.detach(), b.detach(), 1e-5))))
        out.append(("group_norm_silu_backward", shape, "torch", 3 * B16 * n, 0, "6 B H W C",
                    lambda y=y, x=x, g=gamma, b=beta, dy=dy: torch.autograd.grad(y, (x, g, b), dy, retain_graph=True)))

    backends = []
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
            if hasattr(SDPBackend, name):
                backends.append((name.lower().replace("_attention", ""), getattr(SDPBackend, name)))
    except ImportError:
        sdpa_kernel = None
    attns = [("cifar10 16x16", 128, 256, 4, 64), ("64x64 32x32", 32, 1024, 4, 64), ("cifar10 16x16", 128, 256, 1, 256)]
    for what, B, T, heads, D in attns:
        C = heads * D
        shape = f"{what} B{B} T{T} {heads}x{D}"
        # (B, T, C) activations seen as (B, heads, T, D): the layout diffuse's kernels read.
        q, k, v = (rnd((B, T, C), torch.bfloat16, dev).view(B, T, heads, D).transpose(1, 2).requires_grad_()
                   for _ in range(3))
        dout = rnd((B, heads, T, D), torch.bfloat16, dev)
        t2c = B * T * T * C
        for bname, backend in backends or [("default", None)]:
            def fwd(q=q, k=k, v=v, backend=backend):
                if backend is None:
                    return F.scaled_dot_product_attention(q, k, v)
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q, k, v)
            try:
                o = fwd()
                torch.cuda.synchronize()
            except RuntimeError:  # this backend does not take this shape or GPU
                continue
            out.append(("attention_forward", shape, f"torch-sdpa-{bname}", 0, 4 * t2c, "4 B T^2 C",
                        lambda fwd=fwd: fwd()))
            if D == 64:  # backward at the target shapes only
                def bwd(o=o, q=q, k=k, v=v, dout=dout, backend=backend):
                    if backend is None:
                        return torch.autograd.grad(o, (q, k, v), dout, retain_graph=True)
                    with sdpa_kernel([backend]):
                        return torch.autograd.grad(o, (q, k, v), dout, retain_graph=True)
                out.append(("attention_backward", shape, f"torch-sdpa-{bname}", 0, 10 * t2c, "10 B T^2 C", bwd))

    for model, B, n in images:
        z, eps = rnd((B, n), torch.float32, dev), rnd((B, n), torch.float32, dev)

        def step(z=z, eps=eps):
            # The same update as bench/kernels.cpp's coefficients: x0 from eps, clipped, then
            # z' = c_z z + c_eps eps + c_noise noise with eps re-derived from the clipped x0.
            x0 = ((z - 0.43 * eps) / 0.9).clamp_(-1, 1)
            e = (z - 0.9 * x0) / 0.43
            return 1.05 * z - 0.1 * e + 0.05 * torch.randn_like(z)
        out.append(("sampler_step", f"{model} {shape_str(B, n)}", "torch", 3 * F32 * B * n, 0, "12 B n", step))

    n = 35746307  # ddpm-cifar10's parameters (docs/models.md)
    w = torch.nn.Parameter(rnd((n,), torch.float32, dev))
    w.grad = rnd((n,), torch.float32, dev)
    ema, wb = w.detach().clone(), torch.empty(n, dtype=torch.bfloat16, device=dev)
    opt = torch.optim.AdamW([w], lr=2e-4, weight_decay=0.01, fused=True)

    def adamw_ema():
        opt.step()
        ema.lerp_(w.detach(), 1 - 0.9999)
        wb.copy_(w.detach())
    shape = f"ddpm-cifar10 {n} params"
    out.append(("adamw_ema", shape, "torch", 9 * F32 * n + B16 * n, 0, "38 n", adamw_ema))
    out.append(("grad_norm (reduce_all sum of squares)", shape, "torch", F32 * n, 0, "4 n",
                lambda: torch.linalg.vector_norm(w.grad)))

    rows, L = 128 * 256, 256
    x = rnd((rows, L), torch.bfloat16, dev, -4, 4).requires_grad_()
    y = torch.softmax(x, -1)
    dy = rnd((rows, L), torch.bfloat16, dev)
    out.append(("softmax_forward", shape_str(rows, L), "torch", 2 * B16 * rows * L, 0, "4 R L",
                lambda x=x: torch.softmax(x.detach(), -1)))
    out.append(("softmax_backward", shape_str(rows, L), "torch", 3 * B16 * rows * L, 0, "6 R L",
                lambda y=y, x=x, dy=dy: torch.autograd.grad(y, x, dy, retain_graph=True)))
    B, K = 8192, 1000
    logits = rnd((B, K), torch.float32, dev, -4, 4).requires_grad_()
    labels = (torch.arange(B, device=dev) * 7919) % K
    loss = F.cross_entropy(logits, labels)
    out.append(("cross_entropy_forward", shape_str(B, K), "torch", F32 * B * K, 0, "4 B K",
                lambda: F.cross_entropy(logits.detach(), labels)))
    out.append(("cross_entropy_backward", shape_str(B, K), "torch", 2 * F32 * B * K, 0, "8 B K",
                lambda: torch.autograd.grad(loss, logits, retain_graph=True)))

    model, B, H, W, C, _ = maps[0]
    n = B * H * W * C
    shape = f"{model} {shape_str(B, H, W, C)}"
    cl = torch.channels_last
    a = rnd((B, C, H, W), torch.bfloat16, dev).contiguous(memory_format=cl)
    b = rnd((B, C, H, W), torch.bfloat16, dev).contiguous(memory_format=cl)
    e = rnd((B, C, 1, 1), torch.bfloat16, dev)
    out.append(("add (residual)", shape, "torch", 3 * B16 * n, 0, "6 B H W C", lambda: a + b))
    out.append(("add (per-sample embedding, broadcast)", shape, "torch", 2 * B16 * n + B16 * B * C, 0,
                "4 B H W C + 2 B C", lambda: a + e))
    out.append(("silu_forward", shape, "torch", 2 * B16 * n, 0, "4 B H W C", lambda: F.silu(a)))
    out.append(("silu_backward", shape, "torch", 3 * B16 * n, 0, "6 B H W C",
                lambda: torch.ops.aten.silu_backward(b, a)))
    out.append(("reduce_sum (bias gradient)", shape, "torch", B16 * n + F32 * C, 0, "2 B H W C + 4 C",
                lambda: b.sum(dim=(0, 2, 3), dtype=torch.float32)))
    xf, yf = rnd((n,), torch.float32, dev), rnd((n,), torch.float32, dev)
    out.append(("axpby f32 (y = a x + y)", shape_str(n), "torch", 3 * F32 * n, 0, "12 n",
                lambda: yf.add_(xf, alpha=0.5)))

    B, H, W, C = 128, 16, 16, 256
    small = B * H * W * C
    shape = f"cifar10 {shape_str(B, H, W, C)} <-> {shape_str(B, 2 * H, 2 * W, C)}"
    lo = rnd((B, C, H, W), torch.bfloat16, dev).contiguous(memory_format=cl).requires_grad_()
    hi = rnd((B, C, 2 * H, 2 * W), torch.bfloat16, dev).contiguous(memory_format=cl).requires_grad_()
    up, down = F.interpolate(lo, scale_factor=2, mode="nearest"), F.avg_pool2d(hi, 2)
    g_hi = rnd((B, C, 2 * H, 2 * W), torch.bfloat16, dev).contiguous(memory_format=cl)
    g_lo = rnd((B, C, H, W), torch.bfloat16, dev).contiguous(memory_format=cl)
    nbytes = B16 * 5 * small
    out.append(("upsample_nearest2x_forward", shape, "torch", nbytes, 0, "2 (n + 4 n)",
                lambda: F.interpolate(lo.detach(), scale_factor=2, mode="nearest")))
    out.append(("upsample_nearest2x_backward", shape, "torch", nbytes, 0, "2 (4 n + n)",
                lambda: torch.autograd.grad(up, lo, g_hi, retain_graph=True)))
    out.append(("avg_pool2x_forward", shape, "torch", nbytes, 0, "2 (4 n + n)", lambda: F.avg_pool2d(hi.detach(), 2)))
    out.append(("avg_pool2x_backward", shape, "torch", nbytes, 0, "2 (n + 4 n)",
                lambda: torch.autograd.grad(down, hi, g_lo, retain_graph=True)))

    rows, C = 128 * 32 * 32, 128
    ca, cb = rnd((rows, C), torch.bfloat16, dev), rnd((rows, C), torch.bfloat16, dev)
    out.append(("concat (copy_rows)", f"cifar10 {shape_str(128, 32, 32, C)} x2", "torch", 2 * 2 * B16 * rows * C, 0,
                "8 B H W C", lambda: torch.cat([ca, cb], dim=-1)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_kernels: no GPU (torch.cuda.is_available() is False); nothing measured")
        return 0
    dev = torch.device("cuda:0")
    torch.backends.cuda.matmul.allow_tf32 = False
    timer = Timer(args.warmup, args.iters, dev)
    props = torch.cuda.get_device_properties(dev)
    print(f"torch_kernels on {props.name}, torch {torch.__version__}; median of {args.iters} runs after "
          f"{args.warmup} warm-up runs, L2 flushed before each run\n")
    print(f"{'kernel':38} {'shape':42} {'impl':26} {'time_us':>10} {'GB/s':>9} {'TFLOP/s':>9}  formula")
    rows = []
    for kernel, shape, impl, nbytes, flops, formula, fn in cases(dev):
        if args.only and args.only not in kernel:
            continue
        ms = timer.median_ms(fn)
        r = {"kernel": kernel, "shape": shape, "impl": impl, "time_us": ms * 1e3, "formula": formula}
        gb = tf = "-"
        if nbytes:
            r["bytes"], r["gbps"] = nbytes, nbytes / (ms * 1e-3) / 1e9
            gb = f"{r['gbps']:.0f}"
        if flops:
            r["flops"], r["tflops"] = flops, flops / (ms * 1e-3) / 1e12
            tf = f"{r['tflops']:.1f}"
        print(f"{kernel:38} {shape:42} {impl:26} {ms * 1e3:10.1f} {gb:>9} {tf:>9}  {formula}", flush=True)
        rows.append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": props.name, "torch": torch.__version__, "warmup": args.warmup,
                       "iters": args.iters, "command": " ".join(sys.argv), "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
