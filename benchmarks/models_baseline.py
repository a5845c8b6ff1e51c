"""Baseline of the embedded models: what the stock (dense-attention) models generate at 1x / 2x / 4x.

Images: for each model and scale, ``--samples`` seeded samples cycling through all colour x shape prompts; the
classical detector counts objects. ``ok`` = exactly one object of the prompted colour; ``duplicated`` = two or more
objects (the classic failure of a model sampled above its training resolution, which hi-res pipelines must beat).
Video: 8 (training length), 16 and 32 frames; ``persistent`` = exactly one object of one colour in every frame;
``direction`` = the centroid moves the prompted way.

Writes ``benchmarks/results/models_baseline.json`` and prints a markdown table. Run:
``python benchmarks/models_baseline.py [--samples 36] [--steps 20]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from attnplug.loading import load
from attnplug.models.data import COLORS, DIRECTIONS, SHAPES, image_prompt, video_prompt
from attnplug.models.grid import tile
from attnplug.report import Stopwatch, as_float_array, environment, judge, write_json

ROOT = Path(__file__).resolve().parent


def image_prompts(n: int) -> list[str]:
    """``n`` prompts cycling colours fastest, then shapes."""
    return [image_prompt(COLORS[i % len(COLORS)], SHAPES[(i // len(COLORS)) % len(SHAPES)]) for i in range(n)]


def video_prompts(n: int) -> list[str]:
    """``n`` video prompts cycling colours, shapes and directions."""
    dirs = list(DIRECTIONS)
    return [video_prompt(COLORS[i % 6], SHAPES[(i // 2) % 3], dirs[i % 4]) for i in range(n)]


def bench_images(name: str, scales: list[int], samples: int, steps: int, batch: int, grid_dir: Path | None,
                 samples_4x: int | None = None) -> list:
    pipe = load(name)
    base = pipe.sample_defaults["height"]
    rows = []
    for scale in scales:
        size = base * scale
        n = samples if scale < 4 or samples_4x is None else samples_4x
        prompts = image_prompts(n)
        counts, oks, dups, dup_same, empty, correct_shape = [], 0, 0, 0, 0, 0
        images = []
        with Stopwatch() as sw:
            for i in range(0, n, batch):
                chunk = prompts[i:i + batch]
                gens = [torch.Generator().manual_seed(1000 + i + j) for j in range(len(chunk))]
                latents = torch.stack([torch.randn(3, size, size, generator=g) for g in gens])
                out = as_float_array(pipe(chunk, height=size, width=size, num_inference_steps=steps,
                                          latents=latents, output_type="np"))
                for prompt, img in zip(chunk, out):
                    color = prompt.split()[0]
                    verdict = judge(img, prompt)
                    counts.append(verdict["count"])
                    oks += verdict["ok"]
                    correct_shape += verdict["shape_ok"]
                    dups += verdict["duplicated"]
                    dup_same += verdict["colors"].count(color) >= 2
                    empty += verdict["count"] == 0
                    images.append(img)
        rows.append({
            "model": name, "scale": scale, "size": size, "samples": n, "steps": steps,
            "ok_rate": oks / n, "ok_shape_rate": correct_shape / n, "duplication_rate": dups / n,
            "same_color_duplication_rate": dup_same / n, "empty_rate": empty / n,
            "mean_objects": sum(counts) / n, "seconds_per_image": sw.seconds / n,
        })
        if grid_dir is not None:
            grid = tile([images[k:k + 6] for k in range(0, min(len(images), 12), 6)], scale=max(1, 4 // scale))
            grid.save(grid_dir / f"baseline_{scale}x.png", optimize=True)
        print(rows[-1], flush=True)
    return rows


def bench_video(name: str, frame_counts: list[int], samples: int, steps: int, batch: int) -> list:
    pipe = load(name)
    rows = []
    for frames in frame_counts:
        prompts = video_prompts(samples)
        persistent, color_ok, direction_ok, linear = 0, 0, 0, []
        with Stopwatch() as sw:
            for i in range(0, samples, batch):
                chunk = prompts[i:i + batch]
                h, w = pipe.sample_defaults["height"], pipe.sample_defaults["width"]
                gens = [torch.Generator().manual_seed(2000 + i + j) for j in range(len(chunk))]
                latents = torch.stack([torch.randn(3, frames, h, w, generator=g) for g in gens])
                out = as_float_array(pipe(chunk, num_frames=frames, num_inference_steps=steps, latents=latents,
                                          generator=gens, output_type="np"))
                for prompt, video in zip(chunk, out):
                    verdict = judge(video, prompt)
                    persistent += verdict["persistent"]
                    color_ok += verdict["color_ok"]
                    direction_ok += verdict["direction_ok"]
                    if verdict["linearity"] is not None:
                        linear.append(verdict["linearity"])
        rows.append({
            "model": name, "frames": frames, "samples": samples, "steps": steps,
            "persistent_rate": persistent / samples, "color_rate": color_ok / samples,
            "direction_rate": direction_ok / samples,
            "mean_linearity": sum(linear) / len(linear) if linear else None,
            "seconds_per_video": sw.seconds / samples,
        })
        print(rows[-1], flush=True)
    return rows


def table(result: dict) -> str:
    lines = ["| model | scale | size | samples | ok (1 obj, colour) | + shape | duplicated (>=2) | empty "
             "| mean objects |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["images"]:
        lines.append(f"| {r['model']} | {r['scale']}x | {r['size']} | {r['samples']} | {r['ok_rate']:.0%} "
                     f"| {r['ok_shape_rate']:.0%} "
                     f"| {r['duplication_rate']:.0%} | {r['empty_rate']:.0%} | {r['mean_objects']:.2f} |")
    if result["video"]:
        lines += ["", "| model | frames | persistent (1 obj every frame) | + colour | + direction | linearity |",
                  "|---|---|---|---|---|---|"]
        for r in result["video"]:
            lin = "-" if r["mean_linearity"] is None else f"{r['mean_linearity']:.2f}"
            lines.append(f"| {r['model']} | {r['frames']} | {r['persistent_rate']:.0%} | {r['color_rate']:.0%} "
                         f"| {r['direction_rate']:.0%} | {lin} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["shapes-unet", "shapes-dit"])
    parser.add_argument("--scales", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--samples", type=int, default=36)
    parser.add_argument("--samples-4x", type=int, default=18, help="samples at 4x (the slowest)")
    parser.add_argument("--video-samples", type=int, default=24)
    parser.add_argument("--frames", nargs="+", type=int, default=[8, 16, 32])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-video", action="store_true")
    parser.add_argument("--grids", action="store_true", help="save example grids into the model folders")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "models_baseline.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from attnplug.models.loader import MODELS_DIR

    result = {"images": [], "video": [], "torch_threads": args.threads, "environment": environment("cpu")}
    for name in args.models:
        grid_dir = MODELS_DIR / name if args.grids else None
        result["images"] += bench_images(name, args.scales, args.samples, args.steps, args.batch, grid_dir,
                                         args.samples_4x)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
    if not args.no_video:
        result["video"] = bench_video("shapes-video", args.frames, args.video_samples, args.steps, args.batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(table(result))


if __name__ == "__main__":
    main()
