"""Agent attention on CPU: attention time vs dense SDPA, end-to-end U-Net time at 2x / 4x its training resolution,
and output fidelity vs dense (PSNR of the final latent of a short denoising run) at several agent counts.

1. Attention: ``AgentMethod`` (pooling included) vs ``F.scaled_dot_product_attention`` on the same ``(B, H, N, D)``
   tensors, N in {4096, 16384} (64x64 and 128x128 grids), 64 and 256 agents (pooled and merged); medians of
   ``--repeats`` runs measured round-robin with dense in the same run (the machine is shared), ratio dense / agent.
2. End to end: a small SD-like ``UNet2DConditionModel`` (random weights, trained size 32x32 latents, head dim 64)
   at 64x64 and 128x128 latents, one forward, dense vs agent attention (AgentSD default blocks: highest resolution).
3. Fidelity: ``--steps`` DDIM steps at 64x64 latents with the same seed, dense vs agent attention at several agent
   counts (all steps, and the AgentSD recipe of the first 40 % of steps); PSNR of the final latent against dense
   (peak = the dense latent's value range). Random weights: a relative figure, not image quality.

Writes ``benchmarks/results/agent_cpu.json`` and prints a markdown table. Run:
``python benchmarks/agent_bench.py [--repeats 3] [--steps 10] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import attnplug
from attnplug.layout import TokenLayout
from attnplug.methods.agent import AgentConfig, AgentMethod
from attnplug.methods.base import CallInfo

ROOT = Path(__file__).resolve().parent
EVERY_STEP = attnplug.Schedule()  # instead of the agent's default schedule (first 40 % of the steps)
SECTIONS = "attention,e2e,fidelity,trained"


def interleaved_medians(cases: dict, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time (s) of each case, measured round-robin so load changes on a shared machine hit every case
    alike. ``cases``: label -> ``(setup, fn, teardown)``; only ``fn()`` is timed."""
    times: dict[str, list[float]] = {label: [] for label in cases}
    for r in range(warmup + repeats):
        for label, (setup, fn, teardown) in cases.items():
            setup()
            t = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - t
            teardown()
            if r >= warmup:
                times[label].append(elapsed)
    return {label: statistics.median(ts) for label, ts in times.items()}


def _noop():
    pass


def bench_attention(sides, agent_counts, heads, dim, repeats, sources=("pool", "merge")) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    for side in sides:
        layout = TokenLayout(1, side, side)
        n = layout.num_tokens
        q, k, v = (torch.randn(1, heads, n, dim) for _ in range(3))
        cases = {"dense": (_noop, lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v), _noop)}
        for source in sources:
            for count in agent_counts:
                method = AgentMethod(AgentConfig(agents=count, agent_source=source))
                cases[(source, count)] = (
                    _noop, lambda m=method, q=q, k=k, v=v, layout=layout: m(q, k, v, layout, None, CallInfo()), _noop
                )
        with torch.no_grad():
            med = interleaved_medians(cases, repeats)
        for key, agent in med.items():
            if key == "dense":
                continue
            source, count = key
            dense = med["dense"]
            rows.append(dict(
                n=n, grid=[side, side], heads=heads, dim=dim, agents=count, source=source,
                dense_s=dense, agent_s=agent, speedup=dense / agent,
            ))
            print(f"attention N={n} agents={count} ({source}): dense {dense * 1e3:.1f} ms, "
                  f"agent {agent * 1e3:.1f} ms, x{dense / agent:.2f}", flush=True)
    return rows


def bench_unet(train_size: int = 32):
    """An SD-like U-Net (2 levels, 64/128 channels, head dim 64, random weights) trained at ``train_size`` latents."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=train_size, in_channels=4, out_channels=4, block_out_channels=(64, 128), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(1, 2), norm_num_groups=32,
    ).eval()


def bench_e2e(unet, scales, configs, repeats, train_size=32) -> list[dict]:
    rows = []
    text = torch.randn(1, 16, 64)
    for scale in scales:
        size = train_size * scale
        sample = torch.randn(1, 4, size, size)

        def run(unet=unet, sample=sample):
            with torch.no_grad():
                unet(sample, torch.tensor(500), encoder_hidden_states=text, return_dict=False)

        cases = {"dense": (_noop, run, _noop)}
        for label, cfg in configs.items():
            cases[label] = (lambda cfg=cfg: attnplug.apply(unet, cfg, schedule=EVERY_STEP), run,
                            lambda: attnplug.remove(unet))
        med = interleaved_medians(cases, repeats)
        attnplug.apply(unet, configs[next(iter(configs))], schedule=EVERY_STEP)
        run()
        calls = attnplug.stats(unet)["self"]["method"]
        attnplug.remove(unet)
        for label in configs:
            dense, agent = med["dense"], med[label]
            rows.append(dict(
                scale=scale, latent=[size, size], tokens_highest=size * size, config=label, dense_s=dense,
                agent_s=agent, speedup=dense / agent, agent_calls_per_forward=calls,
            ))
            print(f"e2e {scale}x ({size}x{size} latent) {label}: dense {dense:.2f} s, agent {agent:.2f} s, "
                  f"x{dense / agent:.2f}", flush=True)
    return rows


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR of ``x`` against ``ref`` in dB, peak = value range of ``ref``."""
    mse = float((x.double() - ref.double()).pow(2).mean())
    peak = float(ref.max() - ref.min())
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def bench_fidelity(unet, size, steps, agent_counts) -> list[dict]:
    from diffusers import DDIMScheduler

    def holder():  # a pipeline-like holder, so attnplug knows the number of steps (the default schedule)
        return SimpleNamespace(unet=unet, scheduler=DDIMScheduler(steps_offset=1, clip_sample=False))

    ref = _denoise_with(holder(), size, steps)
    rows = []
    for count in agent_counts:
        for label, schedule in (("all steps", EVERY_STEP), ("first 40% of steps", None)):  # None: the default
            pipe = holder()
            attnplug.apply(pipe, AgentConfig(agents=count), schedule=schedule)
            out = _denoise_with(pipe, size, steps)
            stats = attnplug.stats(pipe)["self"]
            attnplug.remove(pipe)
            value = psnr(out, ref)
            rows.append(dict(latent=[size, size], agents=count, steps=steps, schedule=label, psnr_db=value,
                             agent_calls=stats["method"], dense_calls=stats["stock"]))
            print(f"fidelity {size}x{size} agents={count} {label}: PSNR {value:.2f} dB", flush=True)
    return rows


def _denoise_with(holder, size: int, steps: int, seed: int = 0) -> torch.Tensor:
    """``steps`` DDIM steps of ``holder.unet`` from seeded noise at ``size x size`` latents; the final latent."""
    sched, unet = holder.scheduler, holder.unet
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, size, size, generator=g)
    text = torch.randn(1, 16, 64, generator=g)
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(latents, t, encoder_hidden_states=text, return_dict=False)[0]
            latents = sched.step(eps, t, latents).prev_sample
    return latents


def bench_trained(name: str, size: int, steps: int, configs: dict, prompts=("red circle", "blue square")) -> list:
    """Fidelity on an embedded trained pixel-space model: PSNR of the generated images (the final sample in
    [-1, 1]) against dense with the same seed, and whether the detector finds one object of the prompted colour."""
    from attnplug.models import available_models, detect, load_pipeline

    if name not in available_models():
        print(f"{name}: no trained weights in this checkout; skipped", flush=True)
        return []
    pipe = load_pipeline(name)
    from attnplug.models.loader import WEIGHTS_FILE, resolve_model_dir

    weights = resolve_model_dir(name) / WEIGHTS_FILE
    stamp = dict(weights_mtime=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(weights.stat().st_mtime)))

    def generate():
        g = torch.Generator().manual_seed(0)
        return pipe(list(prompts), height=size, width=size, num_inference_steps=steps, generator=g,
                    output_type="pt").images * 2 - 1

    def ok(images):
        found = [detect(img.add(1).div(2)) for img in images]
        return [d.count == 1 and d.colors[0] == p.split()[0] for d, p in zip(found, prompts)]

    ref = generate()
    rows = [dict(model=name, size=[size, size], config="dense", steps=steps, psnr_db=math.inf, ok=ok(ref), **stamp)]
    for label, (cfg, schedule) in configs.items():
        with attnplug.applied(pipe, cfg, schedule=schedule):
            out = generate()
            stats = attnplug.stats(pipe)["self"]
        value = psnr(out, ref)
        rows.append(dict(model=name, size=[size, size], config=label, steps=steps, psnr_db=value, ok=ok(out),
                         agent_calls=stats["method"], dense_calls=stats["stock"], **stamp))
        print(f"{name} {size}x{size} {label}: PSNR {value:.2f} dB, ok {rows[-1]['ok']}", flush=True)
    return rows


def table(result: dict) -> str:
    lines = ["| N | agents | dense SDPA (ms) | agent (ms) | speed-up |", "|---|---|---|---|---|"]
    for r in result.get("attention", []):
        src = "" if r["source"] == "pool" else f" ({r['source']})"
        lines.append(f"| {r['n']} | {r['agents']}{src} | {r['dense_s'] * 1e3:.1f} | {r['agent_s'] * 1e3:.1f} | "
                     f"{r['speedup']:.2f}x |")
    lines += ["", "| U-Net latent | config | dense (s) | agent (s) | speed-up |", "|---|---|---|---|---|"]
    for r in result.get("e2e", []):
        lines.append(f"| {r['scale']}x ({r['latent'][0]}x{r['latent'][1]}) | {r['config']} | {r['dense_s']:.2f} | "
                     f"{r['agent_s']:.2f} | {r['speedup']:.2f}x |")
    lines += ["", "| latent | agents | schedule | PSNR vs dense (dB) |", "|---|---|---|---|"]
    for r in result.get("fidelity", []):
        lines.append(f"| {r['latent'][0]}x{r['latent'][1]} | {r['agents']} | {r['schedule']} | {r['psnr_db']:.2f} |")
    if result.get("trained"):
        lines += ["", "| model | image | config | PSNR vs dense (dB) | one object of the prompted colour |",
                  "|---|---|---|---|---|"]
        for r in result["trained"]:
            lines.append(f"| {r['model']} | {r['size'][0]}x{r['size'][1]} | {r['config']} | {r['psnr_db']:.2f} | "
                         f"{sum(r['ok'])}/{len(r['ok'])} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="small sizes only (smoke run)")
    parser.add_argument("--sections", default=SECTIONS,
                        help=f"comma-separated subset of {SECTIONS}; others are kept from an existing --out file")
    parser.add_argument("--out", default=str(ROOT / "results" / "agent_cpu.json"))
    args = parser.parse_args(argv)

    sides = (32, 64) if args.quick else (64, 128)
    scales = (2,) if args.quick else (2, 4)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() and args.sections != SECTIONS else {}
    result.update(
        device="cpu", torch=torch.__version__, threads=torch.get_num_threads(), cpu_count=os.cpu_count(),
        load_avg_start=os.getloadavg(), platform=platform.platform(), repeats=args.repeats,
    )
    sections = set(args.sections.split(","))
    if "attention" in sections:
        result["attention"] = bench_attention(sides, (64, 256), args.heads, 64, args.repeats)
    if "e2e" in sections or "fidelity" in sections:
        unet = bench_unet()
    if "e2e" in sections:
        configs = {
            "agent, 256 agents": AgentConfig(agents=256),
            "agent, AgentSD default (4x4 cells)": AgentConfig(),
        }
        result["e2e"] = bench_e2e(unet, scales, configs, args.repeats)
    if "fidelity" in sections:
        result["fidelity"] = bench_fidelity(unet, 32 if args.quick else 64, args.steps, (16, 64, 256, 1024))
    if "trained" in sections:
        configs = {f"{n} agents": (AgentConfig(agents=n), EVERY_STEP) for n in (4, 16, 64, 256)}
        configs["16 agents, first 40% of steps"] = (AgentConfig(agents=16), None)  # the default schedule
        result["trained"] = []
        for size in (32,) if args.quick else (32, 64):  # training size and 2x (16x16 and 32x32 tokens)
            result["trained"] += bench_trained("shapes-dit", size, args.steps, configs)
    result["load_avg_end"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
