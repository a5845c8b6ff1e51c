"""Long video on the embedded ``shapes-video`` (Wan, trained on 8 frames): stock vs ``attnplug.pipelines.long_video``.

For each frame count (1x, 2x, 4x the training length) and each technique alone and combined, ``--prompts`` prompts x
``--seeds`` seeds (seed ``2000 + prompt + 1000 x repeat``; 24 x 4 = 96 videos by default) are judged by
``attnplug.models.summarize_video``:

- *persistent*: one object of one colour in every frame;
- *steady*: persistent, moving at >= 0.2 px/frame, straight-line fit R^2 >= 0.8 (the per-frame speed criterion);
- *steady path*: persistent, R^2 >= 0.8, and a straight path of at least 1.4 px (what 0.2 px/frame gives over the
  8-frame training length), whatever the frame count.

The model's training clips are 8-frame windows of 12-frame paths that stay in the frame (``docs/models.md``); the
defaults divide temporal positions by the extension, which slows the learned 1.0-1.1 px/frame by it (to 0.25-0.28
px/frame at 4x) on a path that stays in the frame. Each row records the resolved ``position_scale``. Wall time is the
ratio to stock at the same frame count: stock and every variant run one after another for each prompt, in one process,
so load changes affect them alike. A tiny random AnimateDiff pipeline (training length 16) runs 4x its length with
``long_video`` (FreeNoise + VSTAR) and with diffusers' FreeNoise alone (time and shape only: random weights make no
objects). Writes ``benchmarks/results/long_video.json`` and the frame strip
``benchmarks/results/long_video_strip.png``.

    python benchmarks/longvideo_bench.py --prompts 24 --seeds 4
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image
from tqdm import tqdm

from attnplug import SparseVideoConfig
from attnplug.models import load_pipeline, summarize_video
from attnplug.models.catalog import weights_digest
from attnplug.models.data import COLORS, DIRECTIONS, SHAPES, video_prompt
from attnplug.pipelines import LongVideoConfig, long_video, long_video_plan

ROOT = Path(__file__).resolve().parent
TRAIN_FRAMES = 8
MIN_SPEED, MIN_R2 = 0.2, 0.8
MIN_PATH = MIN_SPEED * (TRAIN_FRAMES - 1)
OFF = dict(noise_rescheduling=False, temporal_windows=False, rope="none", sparse=None)
LONG = SparseVideoConfig(pattern="long")
VARIANTS = {  # each technique alone, then combined
    "noise": LongVideoConfig(**{**OFF, "noise_rescheduling": True}),
    "windows": LongVideoConfig(**{**OFF, "temporal_windows": True}),
    "riflex": LongVideoConfig(**{**OFF, "rope": "riflex", "position_scale": 1}),
    "interpolation": LongVideoConfig(**{**OFF, "rope": "riflex"}),
    "damping": LongVideoConfig(**{**OFF, "damping": True}),
    "long": LongVideoConfig(**{**OFF, "sparse": LONG}),
    "defaults": LongVideoConfig(),
    "defaults+damping": LongVideoConfig(damping=True),
    "windows_recipe": LongVideoConfig(sparse=None),
}


def prompts(n: int) -> list[str]:
    dirs = list(DIRECTIONS)
    return [video_prompt(COLORS[i % 6], SHAPES[(i // 2) % 3], dirs[i % 4]) for i in range(n)]


def judge_one(video) -> dict:
    s = summarize_video(video)
    speed = 0.0 if s.velocity is None else float(np.hypot(*s.velocity))
    r2 = s.linearity or 0.0
    path = speed * (len(video) - 1)
    return {"persistent": s.persistent, "steady": bool(s.persistent and speed >= MIN_SPEED and r2 >= MIN_R2),
            "steady_path": bool(s.persistent and path >= MIN_PATH and r2 >= MIN_R2), "speed": speed, "r2": r2}


def summarise(rows: list[dict]) -> dict:
    n = len(rows)
    return {
        "persistent": sum(r["persistent"] for r in rows) / n,
        "steady": sum(r["steady"] for r in rows) / n,
        "steady_path": sum(r["steady_path"] for r in rows) / n,
        "median_speed": float(np.median([r["speed"] for r in rows])),
        "median_r2": float(np.median([r["r2"] for r in rows])),
    }


def seed_of(prompt_index: int, repeat: int, base: int = 2000) -> int:
    """The seed of prompt ``prompt_index``'s ``repeat``-th video (``base + i + 1000 r``; defaults are fitted on
    another ``base``, so their seeds never meet the benchmark's)."""
    return base + prompt_index + 1000 * repeat


def generate(pipe, prompt: str, seed: int, frames: int, steps: int, config: LongVideoConfig | None):
    g = torch.Generator().manual_seed(seed)
    if config is None:
        size = pipe.sample_defaults
        lat = torch.randn(1, 3, frames, size["height"], size["width"], generator=g)
        return pipe(prompt, num_frames=frames, num_inference_steps=steps, latents=lat, generator=g,
                    output_type="np").frames[0]
    return long_video(pipe, prompt, num_frames=frames, config=config, num_inference_steps=steps, generator=g,
                      output_type="np").frames[0]


def run_frames(pipe, frames: int, n: int, steps: int, variants: dict, seeds: int = 1, base: int = 2000
               ) -> list[dict]:
    """Every variant for each prompt x seed in turn (interleaved timing): one summary row per variant."""
    judged = {k: [] for k in variants}
    seconds = dict.fromkeys(variants, 0.0)
    jobs = [(i, p, r) for r in range(seeds) for i, p in enumerate(prompts(n))]
    for i, p, r in tqdm(jobs, desc=f"{frames} frames", leave=False):
        for name, cfg in variants.items():
            t = time.perf_counter()
            video = generate(pipe, p, seed_of(i, r, base), frames, steps, cfg)
            seconds[name] += time.perf_counter() - t
            judged[name].append(judge_one(video))
    rows = [{"frames": frames, "variant": k, "videos": len(jobs), **summarise(judged[k]), "seconds": seconds[k],
             "time_ratio": seconds[k] / seconds["stock"],
             "position_scale": None if cfg is None else long_video_plan(pipe, frames, cfg).position_scale}
            for k, cfg in variants.items()]
    return rows


def animatediff_rows(steps: int) -> list[dict]:
    """Tiny random AnimateDiff at 4x its motion length: attnplug's long_video vs diffusers' FreeNoise alone."""
    from attnplug.pipelines._long_video.api import _disable_free_noise
    from attnplug.testing import tiny_pipeline

    pipe = tiny_pipeline("animatediff", tempfile.mkdtemp())
    pipe.set_progress_bar_config(disable=True)
    frames, train = 64, 16
    args = dict(num_frames=frames, num_inference_steps=steps, height=32, width=32, output_type="np")

    def free_noise():
        pipe.enable_free_noise(context_length=train, context_stride=train // 2)
        try:
            return pipe("red circle", generator=torch.Generator().manual_seed(0), **args).frames
        finally:
            _disable_free_noise(pipe)

    runs = {  # stock cannot run 64 frames: the motion modules' positional table has 32 rows
        "free_noise": free_noise,
        "long_video": lambda: long_video(pipe, "red circle", generator=torch.Generator().manual_seed(0),
                                         **args).frames,
    }
    seconds = dict.fromkeys(runs, 0.0)
    shapes = {}
    for _ in range(3):
        for name, fn in runs.items():
            t = time.perf_counter()
            shapes[name] = list(np.asarray(fn()).shape)
            seconds[name] += time.perf_counter() - t
    return [{"model": "tiny AnimateDiff (random)", "frames": frames, "motion_length": train, "variant": k,
             "shape": shapes[k], "seconds": seconds[k] / 3, "time_ratio": seconds[k] / seconds["free_noise"]}
            for k in runs]


def save_strip(pipe, frames: int, steps: int, path: Path, n: int = 3, every: int = 2) -> None:
    """Rows stock / defaults for the first ``n`` prompts at ``frames`` frames, every ``every``-th frame, 4x."""
    rows = []
    for i, p in enumerate(prompts(n)):
        for cfg in (None, LongVideoConfig()):
            video = generate(pipe, p, seed_of(i, 0), frames, steps, cfg)[::every]
            gap = np.full((video.shape[1], 1, 3), 0.35)
            rows.append(np.concatenate([x for f in video for x in (f, gap)][:-1], axis=1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 0.35))
    img = (np.concatenate(rows[:-1], axis=0) * 255).round().astype(np.uint8)
    Image.fromarray(img).resize((img.shape[1] * 4, img.shape[0] * 4), Image.NEAREST).save(path)


def bench_pipeline(model: str, threads: int, stochastic: bool):
    """``model``'s pipeline on ``threads`` torch threads, without progress bars; with ``stochastic``, its
    ``FlowMatchEulerDiscreteScheduler`` draws fresh noise every step (``stochastic_sampling=True``)."""
    torch.set_num_threads(threads)
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    if stochastic:
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, stochastic_sampling=True)
    return pipe


def merge(old: dict, new: dict, variants: set[str]) -> dict:
    """``old`` with the rows of ``variants`` (and stock, which every run repeats) taken from ``new``; each row's time
    ratio stays relative to the stock of the run that measured it. ``reruns`` lists the partial runs."""
    rerun = {(r["frames"], r["variant"]) for r in new["rows"] if r["variant"] in {*variants, "stock"}}
    rows = [r for r in old["rows"] if (r["frames"], r["variant"]) not in rerun]
    rows += [r for r in new["rows"] if (r["frames"], r["variant"]) in rerun]
    order = {name: i for i, name in enumerate(["stock", *VARIANTS])}
    rows.sort(key=lambda r: (r["frames"], order.get(r["variant"], len(order))))
    reruns = [*old.get("reruns", []), {"variants": sorted(variants), "torch_threads": new["torch_threads"],
                                       "loadavg": new["loadavg"]}]
    return {**old, "rows": rows, "reruns": reruns}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--seeds", type=int, default=4, help="videos per prompt (seeds 2000 + prompt + 1000 x repeat)")
    ap.add_argument("--model", default="shapes-video", help="embedded model name or model folder")
    ap.add_argument("--no-animatediff", action="store_true", help="skip the tiny AnimateDiff timing")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--frames", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "long_video.json")
    ap.add_argument("--strip-only", action="store_true", help="only redraw the frame strip")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated variants to run (each with stock), of: {', '.join(VARIANTS)}")
    ap.add_argument("--stochastic", action="store_true",
                    help="sample with stochastic_sampling=True (fresh noise every step); no frame strip")
    ap.add_argument("--merge", action="store_true",
                    help="replace only the rows of the variants run in an existing --out (the others are kept)")
    args = ap.parse_args()
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown or not chosen:
        ap.error(f"--variants={args.variants!r}: unknown {unknown or 'none given'}; accepted: {', '.join(VARIANTS)}")
    pipe = bench_pipeline(args.model, args.threads, args.stochastic)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.stochastic:  # the strip shows the shipped sampler
        save_strip(pipe, max(args.frames), args.steps, args.out.parent / "long_video_strip.png")
    if args.strip_only:
        return
    rows = run_frames(pipe, TRAIN_FRAMES, args.prompts, args.steps, {"stock": None}, args.seeds)
    for frames in args.frames:
        rows += run_frames(pipe, frames, args.prompts, args.steps, {"stock": None, **{v: VARIANTS[v] for v in chosen}},
                           args.seeds)
    animatediff = [] if args.no_animatediff else animatediff_rows(2)
    result = {"model": str(args.model), "weights": weights_digest(args.model), "size": pipe.sample_defaults,
              "train_frames": TRAIN_FRAMES, "prompts": args.prompts, "seeds": args.seeds, "steps": args.steps,
              "stochastic_sampling": args.stochastic, "torch_threads": args.threads, "loadavg": os.getloadavg(),
              "rows": rows, "animatediff": animatediff}
    if args.merge and args.out.exists():
        result = merge(json.loads(args.out.read_text()), result, set(chosen))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("| frames | variant | persistent | steady (>= 0.2 px/frame) | steady path (>= 1.4 px) | median speed "
          "| time vs stock |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['frames']} | {r['variant']} | {r['persistent']:.0%} | {r['steady']:.0%} | "
              f"{r['steady_path']:.0%} | {r['median_speed']:.2f} | {r['time_ratio']:.2f} |")
    print("\n| AnimateDiff (tiny, random) | frames | time vs FreeNoise |\n|---|---|---|")
    for r in animatediff:
        print(f"| {r['variant']} | {r['frames']} | {r['time_ratio']:.2f} |")


if __name__ == "__main__":
    main()
