"""CPU benchmark of attnplug's sparse video attention: speed vs dense and fidelity, in one process.

Part 1: a WanTransformer3DModel with random weights (attnplug.testing's tiny Wan config, scaled up) denoises a
``frames x height x width`` latent token grid for a few flow-matching Euler steps, the first ``--warmup`` dense (the
schedule). Each pattern x density is timed against dense with :func:`attnplug.report.time_interleaved` (dense and
sparse alternated, medians), so the speed-up is a ratio measured under the same load. Fidelity: relative error and
PSNR of the final latent vs dense, the relative error of the first sparse step's velocity, and the attention output
error on sampled query rows of every sparse call. Random weights give near-uniform attention, the worst case for a
sparse method: the quality figures are a lower bound.

Part 2: the embedded trained ``shapes-video`` pipeline, decoded frames vs dense (PSNR / SSIM of
:mod:`attnplug.report`) and the detector's persistence verdicts.

    python benchmarks/video_bench.py                 # writes benchmarks/results/video_cpu.json
    python benchmarks/video_bench.py --quick         # small grid, smoke test
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import attnplug
from attnplug.report import environment, time_interleaved, write_json

ROOT = Path(__file__).resolve().parent


def latent_psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB with the reference's value range as peak (latents have no fixed range)."""
    peak = float(ref.max() - ref.min())
    mse = float((x.double() - ref.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref.double()).norm() / ref.double().norm())


# ---------------------------------------------------------------------------------------------------- model + loop
def build_model(args):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(args.seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=args.heads, attention_head_dim=args.head_dim, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=32, ffn_dim=4 * args.heads * args.head_dim, num_layers=args.layers,
        rope_max_seq_len=max(64, args.height, args.width, args.frames),
    ).eval()


def run_loop(model, args, latents, text, record: int | None = None):
    """Euler flow-matching loop; returns ``(final latents, velocity at step `record`)``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(args.steps)
    x, first = latents.clone(), None
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            v = model(hidden_states=x, timestep=t.expand(x.shape[0]), encoder_hidden_states=text, return_dict=False)[0]
            if i == record:
                first = v.clone()
            x = sched.step(v, t, x, return_dict=False)[0]
    return x, first


class ErrorProbe(attnplug.methods.AttentionMethod):
    """Runs a method and, on the calls it computes, measures the relative error of its output against exact
    attention on ``rows`` sampled query rows."""

    supports_mask = True

    def __init__(self, method, rows: int = 128, seed: int = 0):
        self.method, self.rows, self.errors = method, rows, []
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, q, k, v, layout=None, mask=None, info=None):
        out = self.method(q, k, v, layout, mask, info)
        if out is not None:
            idx = torch.randint(0, q.shape[-2], (self.rows,), generator=self.gen)
            scale = info.scale if info else None
            ref = F.scaled_dot_product_attention(q[:, :, idx], k, v, attn_mask=mask, scale=scale)
            self.errors.append(float((out[:, :, idx] - ref).norm() / ref.norm()))
        return out

    def report(self):
        return self.method.report()

    def reset(self):
        self.method.reset()


def configs(args, patterns, densities, tile=None, block=None):
    """Configs for ``patterns`` (``topk-all`` = top-k with every skipped block compensated) at ``densities``."""
    out = []
    tile = tuple(args.tile) if tile is None else tile
    block = args.block if block is None else block
    for name in patterns:
        pattern = "topk" if name == "topk-all" else name
        for density in densities:
            kw = dict(pattern=pattern, density=density, seed=args.seed, tile=tile)
            if name == "topk-all":
                kw.update(rectify="all")
            if pattern == "tiles":
                kw.update(stride_tiles=tuple(args.stride))
            else:
                kw.update(block_size=block)
            if pattern == "threshold":
                if density != densities[0]:
                    continue  # no density budget: one run
                kw.update(threshold=args.threshold)
            out.append((name, attnplug.SparseVideoConfig(**kw)))
    return out


def bench_random(args, save) -> dict:
    """Part 1; ``save(partial)`` is called after every row."""
    model = build_model(args)
    g = torch.Generator().manual_seed(args.seed)
    latents = torch.randn(1, 4, args.frames, 2 * args.height, 2 * args.width, generator=g)
    text = torch.randn(1, 16, 16, generator=g)
    schedule = attnplug.Schedule(warmup_steps=args.warmup)
    tokens = args.frames * args.height * args.width
    print(f"random-weight Wan: {tokens} tokens, {args.layers} layers x {args.heads} heads x {args.head_dim}, "
          f"{args.steps} steps ({args.warmup} dense warm-up), {args.repeats} interleaved repeats", flush=True)
    dense, v_dense = run_loop(model, args, latents, text, record=args.warmup)
    result = dict(
        model="WanTransformer3DModel, random weights", tokens=tokens, grid=[args.frames, args.height, args.width],
        layers=args.layers, heads=args.heads, head_dim=args.head_dim, steps=args.steps, warmup_steps=args.warmup,
        repeats=args.repeats, runs=[],
    )
    for label, cfg in configs(args, args.patterns, args.densities):
        probe = ErrorProbe(cfg.build(), seed=args.seed)
        with attnplug.applied(model, probe, schedule=schedule):
            out, v_first = run_loop(model, args, latents, text, record=args.warmup)
            rep = probe.report()
        # Timing: dense and sparse loops alternated (a fresh application each time, as a user would run).

        def sparse_run(cfg=cfg):
            with attnplug.applied(model, cfg, schedule=schedule):
                return run_loop(model, args, latents, text)

        times = time_interleaved({"dense": lambda: run_loop(model, args, latents, text), "sparse": sparse_run},
                                 warmup=0, repeats=args.repeats)
        row = dict(
            pattern=label, density_target=cfg.density, config={k: v for k, v in cfg.describe().items() if k in (
                "pattern", "density", "tile", "stride_tiles", "block_size", "window_tiles", "threshold", "rectify")},
            density=rep["density"], effective_density=rep["effective_density"], plans=rep["plans"],
            dense_seconds=times["dense"]["seconds"], sparse_seconds=times["sparse"]["seconds"],
            speedup_vs_dense=times["dense"]["median"] / times["sparse"]["median"],
            latent_rel_err=rel_err(out, dense), latent_psnr_db=latent_psnr(out, dense),
            first_sparse_velocity_rel_err=rel_err(v_first, v_dense),
            attention_rel_err=sum(probe.errors) / max(len(probe.errors), 1),
            loadavg=list(os.getloadavg()),
        )
        for key in ("temporal_head_fraction", "compensated_fraction"):
            if key in rep:
                row[key] = rep[key]
        result["runs"].append(row)
        save(result)
        print(f"  {label:9s} d={cfg.density:.2f}: density {row['effective_density']:.3f}, "
              f"{row['speedup_vs_dense']:.2f}x, latent err {row['latent_rel_err']:.4f}, "
              f"attn err {row['attention_rel_err']:.3f}", flush=True)
    return result


def bench_shapes_video(args, save) -> dict:
    """Part 2; ``save(partial)`` is called after every row."""
    from attnplug.models import load_pipeline, summarize_video
    from attnplug.report import as_float_array, psnr, ssim

    pipe = load_pipeline("shapes-video")
    prompt, steps = "red circle moving right", args.shapes_steps
    schedule = attnplug.Schedule(warmup_steps=max(1, round(0.2 * steps)))

    def generate():
        return as_float_array(pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(
            args.seed), output_type="np"))

    dense = generate()
    ref = summarize_video(dense[0])
    result = dict(prompt=prompt, steps=steps, warmup_steps=schedule.warmup_steps, runs=[],
                  dense=dict(persistent=ref.persistent, color=ref.color))
    for label, cfg in configs(args, args.patterns, args.shapes_densities, tile=(1, 4, 4), block=64):
        with attnplug.applied(pipe, cfg, schedule=schedule):
            out = generate()
            rep = attnplug.stats(pipe)["method_report"]
        summary = summarize_video(out[0])
        result["runs"].append(dict(
            pattern=label, density_target=cfg.density, density=rep["density"], psnr_db=psnr(out, dense),
            ssim=ssim(out, dense), persistent=summary.persistent, color=summary.color,
        ))
        save(result)
        print(f"  shapes-video {label:9s} d={cfg.density:.2f}: PSNR {result['runs'][-1]['psnr_db']:.1f} dB",
              flush=True)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=32, help="latent tokens per column (after the 2x2 patch)")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1, help="dense warm-up steps (the schedule)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved dense/sparse timing rounds per config")
    p.add_argument("--patterns", nargs="+", default=["tiles", "heads", "topk", "topk-all", "threshold"])
    p.add_argument("--densities", nargs="+", type=float, default=[0.1, 0.2])
    p.add_argument("--tile", nargs=3, type=int, default=[2, 8, 8])
    p.add_argument("--stride", nargs=3, type=int, default=[1, 1, 2], help="'tiles' stride in tiles")
    p.add_argument("--block", type=int, default=256, help="block size of heads/topk/threshold (CPU: >= 256)")
    p.add_argument("--threshold", type=float, default=6.0)
    p.add_argument("--shapes-steps", type=int, default=20)
    p.add_argument("--shapes-densities", nargs="+", type=float, default=[0.2])
    p.add_argument("--no-shapes", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="4 x 16 x 16 grid, 3 steps, one repeat")
    p.add_argument("--out", default=str(ROOT / "results" / "video_cpu.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.height, args.width, args.steps, args.tile, args.block = 4, 16, 16, 3, [2, 4, 4], 64
        args.stride, args.repeats, args.shapes_steps = [1, 1, 1], 1, 4
    torch.set_num_threads(args.threads)
    result = dict(
        benchmark="video_bench", argv=sys.argv[1:], environment=environment("cpu"),
        note="Speed-ups are medians of dense and sparse loops timed alternately in this process (ratios, not "
             "absolute times: the machine is shared). Random weights give near-uniform attention, the worst case "
             "for sparse attention; quality figures are a lower bound.",
    )
    out = Path(args.out)

    def saver(key):
        def save(partial):
            result[key] = partial
            write_json(out, result)

        return save

    bench_random(args, saver("random"))
    if not args.no_shapes:
        bench_shapes_video(args, saver("shapes_video"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
