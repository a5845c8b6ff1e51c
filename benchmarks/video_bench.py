"""CPU benchmark of attnplug's sparse video attention on a tiny video DiT (Wan config, random weights).

A WanTransformer3DModel (attnplug.testing's tiny Wan config, scaled up) denoises a 16 x 32 x 32 latent token grid
(16,384 tokens) for a few flow-matching Euler steps. Each sparse run (pattern x density, first steps dense as in the
published methods) is compared with a dense run of the same seed and inputs in the same process: end-to-end time
ratio and PSNR / SSIM of the final latent (plus the relative error of the first sparse step's velocity).

Random weights give near-uniform attention, the worst case for any sparse method (no structure to exploit): the
quality figures are a lower bound. If the embedded trained model ``shapes-video`` exists, it is measured too.

    python benchmarks/video_bench.py                       # full run, writes benchmarks/results/video_cpu.json
    python benchmarks/video_bench.py --quick               # small grid, smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import attnplug
from attnplug.methods.sparse_video import SparseVideoConfig

ROOT = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------------- metrics
def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB with the reference's value range as peak."""
    peak = float(ref.max() - ref.min())
    mse = float((x.double() - ref.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def ssim(x: torch.Tensor, ref: torch.Tensor, window: int = 7, sigma: float = 1.5) -> float:
    """Mean SSIM over frames and channels of ``(B, C, F, H, W)`` tensors (Gaussian window, range of ``ref``)."""
    peak = float(ref.max() - ref.min())
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    g = torch.exp(-((torch.arange(window) - window // 2) ** 2) / (2 * sigma * sigma)).double()
    g = g / g.sum()
    kern = (g[:, None] * g[None, :])[None, None]
    a = x.double().permute(0, 2, 1, 3, 4).reshape(-1, 1, *x.shape[-2:])
    b = ref.double().permute(0, 2, 1, 3, 4).reshape(-1, 1, *x.shape[-2:])

    def blur(t):
        return F.conv2d(t, kern)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


# ---------------------------------------------------------------------------------------------------- model + loop
def build_model(args):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(args.seed)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=args.heads, attention_head_dim=args.head_dim, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=32, ffn_dim=4 * args.heads * args.head_dim, num_layers=args.layers,
        rope_max_seq_len=max(64, args.height, args.width, args.frames),
    ).eval()
    return model


def run_loop(model, args, latents, text, record_first: int | None = None):
    """Euler flow-matching loop; returns ``(final latents, seconds, velocity at step record_first)``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(args.steps)
    x = latents.clone()
    first = None
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            v = model(hidden_states=x, timestep=t.expand(x.shape[0]), encoder_hidden_states=text, return_dict=False)[0]
            if record_first is not None and i == record_first:
                first = v.clone()
            x = sched.step(v, t, x, return_dict=False)[0]
    return x, time.perf_counter() - t0, first


class ErrorProbe(attnplug.AttentionMethod):
    """Benchmark wrapper: runs a sparse video method and, on its sparse calls, measures the relative error of its
    attention output against exact attention on ``rows`` sampled query rows."""

    supports_mask = False

    def __init__(self, method, rows: int = 128, seed: int = 0):
        self.method, self.rows, self.errors = method, rows, []
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, q, k, v, layout=None, mask=None, info=None):
        before = len(self.method.report())
        out = self.method(q, k, v, layout, mask, info)
        rec = self.method.report()[before:]
        if out is not None and rec and rec[0]["dense_reason"] is None:
            idx = torch.randint(0, q.shape[-2], (self.rows,), generator=self.gen)
            scale = info.scale if info is not None else None
            ref = F.scaled_dot_product_attention(q[:, :, idx], k, v, scale=scale)
            self.errors.append(float((out[:, :, idx] - ref).norm() / ref.norm()))
        return out

    def reset(self):
        self.method.reset()


def configs(args, patterns, densities):
    """Configs for ``patterns`` (``topk-all`` = top-k with every skipped block compensated) at ``densities``."""
    out = []
    for name in patterns:
        pattern = "topk" if name == "topk-all" else name
        for density in densities:
            kw = dict(pattern=pattern, density=density, dense_warmup_steps=args.warmup, seed=args.seed)
            if name == "topk-all":
                kw.update(rectify="all")
            if pattern == "tiles":
                kw.update(tile=tuple(args.tile), stride=tuple(args.stride))
            elif pattern in ("heads", "topk"):
                kw.update(block_size=args.block, tile=tuple(args.tile))
            elif pattern == "threshold":
                if density != densities[0]:
                    continue  # no density budget: one run
                kw.update(block_size=args.block, tile=tuple(args.tile), threshold=args.threshold)
            out.append(SparseVideoConfig(**kw))
    return out


def fast_gather_patch():
    """Benchmark-only: gather key/value blocks with index_select on a 3-D view (the proposed kernel change)."""
    from attnplug.kernels.block_sparse import torch as bs_torch

    original = bs_torch._gather

    def _gather(x, row, block, n):
        first, last = row[0], row[-1]
        if last - first + 1 == len(row):
            return x[:, :, first * block: min(n, (last + 1) * block)]
        index = torch.cat([torch.arange(j * block, min(n, (j + 1) * block)) for j in row]).to(x.device)
        b, h, _, d = x.shape
        return x.reshape(b * h, -1, d).index_select(1, index).view(b, h, -1, d)

    bs_torch._gather = _gather
    return lambda: setattr(bs_torch, "_gather", original)


def bench_random(args, save) -> dict:
    model = build_model(args)
    g = torch.Generator().manual_seed(args.seed)
    latents = torch.randn(1, 4, args.frames, 2 * args.height, 2 * args.width, generator=g)
    text = torch.randn(1, 16, 16, generator=g)
    tokens = args.frames * args.height * args.width
    print(f"random-weight Wan: {tokens} tokens, {args.layers} layers x {args.heads} heads x {args.head_dim}, "
          f"{args.steps} steps ({args.warmup} dense warm-up)", flush=True)
    dense_a, t_dense_a, v_dense = run_loop(model, args, latents, text, record_first=args.warmup)
    print(f"  dense: {t_dense_a:.1f} s", flush=True)
    rows = []
    result = dict(
        model="WanTransformer3DModel, random weights", tokens=tokens,
        grid=[args.frames, args.height, args.width], layers=args.layers, heads=args.heads, head_dim=args.head_dim,
        steps=args.steps, dense_warmup_steps=args.warmup, dense_seconds=[t_dense_a], runs=rows,
    )
    plans = [("kernel as committed", configs(args, args.patterns, args.densities))]
    if args.gather_fix:
        plans.append(("proposed 3-D gather", configs(args, args.fix_patterns, args.fix_densities)))
    for variant, cfgs in plans:
        restore = fast_gather_patch() if variant != "kernel as committed" else None
        try:
            for cfg in cfgs:
                method = cfg.build()
                probe = ErrorProbe(method, seed=args.seed)
                with attnplug.applied(model, probe):
                    out, secs, v_first = run_loop(model, args, latents, text, record_first=args.warmup)
                summ = method.summary()
                sparse = [r for r in method.report() if r["dense_reason"] is None]
                label = "topk-all" if cfg.pattern == "topk" and cfg.rectify == "all" else cfg.pattern
                row = dict(
                    variant=variant, pattern=label,
                    density_target=cfg.density, seconds=secs,
                    mean_density_sparse_calls=(sum(r["effective_density"] for r in sparse) / len(sparse))
                    if sparse else 1.0,
                    mean_density_all_calls=summ.get("mean_density", 1.0),
                    psnr_db=psnr(out, dense_a), ssim=ssim(out, dense_a),
                    first_sparse_velocity_rel_err=float((v_first - v_dense).norm() / v_dense.norm()),
                    attention_rel_err=sum(probe.errors) / max(len(probe.errors), 1),
                    config={k: v for k, v in cfg.describe().items() if k in (
                        "pattern", "density", "tile", "stride", "block_size", "window", "threshold", "rectify",
                        "dense_warmup_steps")},
                )
                if cfg.pattern == "tiles" and sparse:
                    row["window"] = sparse[0].get("window")
                if cfg.pattern == "heads" and sparse:
                    row["temporal_head_fraction"] = sum(r["temporal_heads"] for r in sparse) / sum(
                        r["temporal_heads"] + r["spatial_heads"] for r in sparse)
                if cfg.pattern == "topk" and sparse:
                    row["compensated_fraction"] = sum(r.get("compensated_fraction", 0) for r in sparse) / len(sparse)
                row["speedup_vs_dense"] = t_dense_a / secs
                rows.append(row)
                save(result)
                print(f"  [{variant}] {row['pattern']:9s} d={cfg.density:.2f} -> {secs:6.1f} s, density "
                      f"{row['mean_density_sparse_calls']:.3f}, PSNR {row['psnr_db']:.1f} dB, SSIM {row['ssim']:.3f}, "
                      f"v-err {row['first_sparse_velocity_rel_err']:.3f}, attn-err {row['attention_rel_err']:.3f}",
                      flush=True)
        finally:
            if restore is not None:
                restore()
    _, t_dense_b, _ = run_loop(model, args, latents, text)
    t_dense = min(t_dense_a, t_dense_b)
    print(f"  dense again: {t_dense_b:.1f} s", flush=True)
    result["dense_seconds"].append(t_dense_b)
    for row in rows:
        row["speedup_vs_dense"] = t_dense / row["seconds"]
    return result


def bench_interleaved(args) -> dict:
    """Dense and sparse runs alternated ``args.interleave`` times per config (robust to load changes): the speed-up
    is the median of the ratios of adjacent (dense, sparse) pairs."""
    model = build_model(args)
    g = torch.Generator().manual_seed(args.seed)
    latents = torch.randn(1, 4, args.frames, 2 * args.height, 2 * args.width, generator=g)
    text = torch.randn(1, 16, 16, generator=g)
    rows = []
    for cfg in configs(args, args.patterns, args.densities):
        pairs = []
        for _ in range(args.interleave):
            dense, t_dense, _ = run_loop(model, args, latents, text)
            method = cfg.build()
            with attnplug.applied(model, method):
                out, t_sparse, _ = run_loop(model, args, latents, text)
            pairs.append((t_dense, t_sparse))
        ratios = sorted(d / s_ for d, s_ in pairs)
        sparse = [r for r in method.report() if r["dense_reason"] is None]
        rows.append(dict(
            pattern=cfg.pattern, density_target=cfg.density, pairs_seconds=pairs,
            median_speedup=ratios[len(ratios) // 2],
            mean_density_sparse_calls=sum(r["effective_density"] for r in sparse) / max(len(sparse), 1),
            psnr_db=psnr(out, dense),
        ))
        shown = [(round(a, 1), round(b, 1)) for a, b in pairs]
        print(f"  interleaved {cfg.pattern:9s} d={cfg.density:.2f}: pairs {shown} -> median "
              f"{rows[-1]['median_speedup']:.2f}x", flush=True)
    return dict(
        tokens=args.frames * args.height * args.width, steps=args.steps, dense_warmup_steps=args.warmup,
        repeats=args.interleave, runs=rows,
    )


def bench_shapes_video(args) -> dict | None:
    try:
        from attnplug.models import load_pipeline

        pipe = load_pipeline("shapes-video")
    except Exception as e:  # the trained model may not exist yet
        print(f"shapes-video not available: {type(e).__name__}: {e}", flush=True)
        return {"available": False, "reason": f"{type(e).__name__}: {e}"}
    prompt = "red circle moving right"
    steps = args.shapes_steps

    def generate():
        g = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        video = pipe(prompt, num_inference_steps=steps, generator=g, output_type="pt").frames
        return torch.as_tensor(video), time.perf_counter() - t0

    dense, t_dense = generate()
    rows = []
    for cfg in configs(args, args.patterns, args.densities):
        kw = cfg.describe()
        kw.pop("method")
        kw.update(tile=(1, 4, 4), block_size=64, dense_warmup_steps=max(1, round(0.2 * steps)))
        method = SparseVideoConfig(**kw).build()
        try:
            with attnplug.applied(pipe, method):
                out, secs = generate()
        except ValueError as e:
            rows.append(dict(pattern=cfg.pattern, density_target=cfg.density, error=str(e)))
            continue
        sparse = [r for r in method.report() if r["dense_reason"] is None]
        v = out.float().reshape(-1, *out.shape[-3:]) if out.dim() > 4 else out.float()
        ref = dense.float().reshape(-1, *dense.shape[-3:]) if dense.dim() > 4 else dense.float()
        rows.append(dict(
            pattern=cfg.pattern, density_target=cfg.density, seconds=secs, speedup_vs_dense=t_dense / secs,
            mean_density_sparse_calls=(sum(r["effective_density"] for r in sparse) / len(sparse)) if sparse else 1.0,
            psnr_db=psnr(v, ref),
        ))
        print(f"  shapes-video {cfg.pattern:9s} d={cfg.density:.2f}: PSNR {rows[-1]['psnr_db']:.1f} dB, "
              f"{rows[-1]['speedup_vs_dense']:.2f}x", flush=True)
    return dict(available=True, prompt=prompt, steps=steps, dense_seconds=t_dense, runs=rows)


def table(result: dict) -> str:
    lines = ["| variant | pattern | target | density | time (s) | speedup | PSNR (dB) | SSIM | v-err | attn-err |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(
            f"| {r['variant']} | {r['pattern']} | {r['density_target']:.2f} | {r['mean_density_sparse_calls']:.3f} | "
            f"{r['seconds']:.1f} | {r['speedup_vs_dense']:.2f}x | {r['psnr_db']:.1f} | {r['ssim']:.3f} | "
            f"{r['first_sparse_velocity_rel_err']:.3f} | {r['attention_rel_err']:.3f} |"
        )
    return "\n".join(lines)


def table_shapes(result: dict) -> str:
    lines = ["| pattern | target | density | time (s) | speedup | PSNR (dB) |", "|---|---|---|---|---|---|"]
    for r in result.get("runs", []):
        if "error" in r:
            lines.append(f"| {r['pattern']} | {r['density_target']:.2f} | error: {r['error']} | | | |")
            continue
        lines.append(
            f"| {r['pattern']} | {r['density_target']:.2f} | {r['mean_density_sparse_calls']:.3f} | "
            f"{r['seconds']:.1f} | {r['speedup_vs_dense']:.2f}x | {r['psnr_db']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--height", type=int, default=32, help="latent tokens per column (after the 2x2 patch)")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1, help="dense warm-up steps (SVG: 10-25%% of steps)")
    p.add_argument("--patterns", nargs="+", default=["tiles", "heads", "topk", "topk-all", "threshold"])
    p.add_argument("--densities", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    p.add_argument("--fix-patterns", nargs="+", default=["tiles", "heads", "topk"])
    p.add_argument("--fix-densities", nargs="+", type=float, default=[0.1, 0.2])
    p.add_argument("--tile", nargs=3, type=int, default=[2, 8, 8])
    p.add_argument("--stride", nargs=3, type=int, default=[1, 1, 2], help="'tiles' stride in tiles")
    p.add_argument("--block", type=int, default=256, help="block size of heads/topk/threshold (CPU: >= 256)")
    p.add_argument("--threshold", type=float, default=6.0)
    p.add_argument("--gather-fix", action="store_true", help="also measure with the proposed 3-D gather in the kernel")
    p.add_argument("--shapes-steps", type=int, default=20)
    p.add_argument("--no-shapes", action="store_true")
    p.add_argument("--interleave", type=int, default=0,
                   help="instead of the full table: alternate dense and each config this many times (median ratio)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="4 x 16 x 16 grid, 3 steps")
    p.add_argument("--out", default=str(ROOT / "results" / "video_cpu.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.height, args.width, args.steps, args.tile, args.block = 4, 16, 16, 3, [2, 4, 4], 64
        args.stride = [1, 1, 1]
    torch.set_num_threads(args.threads)
    result = dict(
        benchmark="video_bench", device="cpu", threads=args.threads, torch=torch.__version__,
        python=platform.python_version(), machine=platform.machine(), argv=sys.argv[1:],
        note="Random weights give near-uniform attention: the worst case for sparse attention; quality is a lower "
             "bound. The machine's 2 cores are shared with other jobs: times are noisy; dense is timed before and "
             "after the sparse runs and the faster of the two is the baseline (rows saved before the second dense "
             "run use the first).",
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        out.write_text(json.dumps(result, indent=2, default=str))

    if not args.no_shapes:  # cheap; first, so its availability is recorded even if the long part is cut short
        result["shapes_video"] = bench_shapes_video(args)
    if args.interleave:
        result["interleaved"] = bench_interleaved(args)
        save()
        return
    result["random"] = bench_random(args, lambda partial: (result.__setitem__("random", partial), save()))
    save()
    print(table(result["random"]))
    if result.get("shapes_video", {}).get("available"):
        print(table_shapes(result["shapes_video"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
