"""Long video on the embedded ``shapes-video`` (Wan, trained on 8 frames): stock vs ``attnplug.pipelines.long_video``.

For each frame count (1x, 2x, 4x the training length) and each technique alone and combined, ``--prompts`` videos
(prompts and seeds 2000 + i as in ``models_baseline.py``) are judged by ``attnplug.models.summarize_video``:
*persistent* = one object of one colour in every frame; *steady* = persistent and moving at >= 0.2 px/frame with a
straight-line fit R^2 >= 0.8. Wall time is the ratio to stock at the same frame count, timed in the same process.
Writes ``benchmarks/results/long_video.json`` and a frame strip ``benchmarks/results/long_video_strip.png``.

    python benchmarks/longvideo_bench.py --prompts 24
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attnplug.models import load_pipeline, summarize_video
from attnplug.models.data import COLORS, DIRECTIONS, SHAPES, video_prompt
from attnplug.pipelines.long_video import LongVideoConfig, long_video

ROOT = Path(__file__).resolve().parent
VARIANTS = {
    "noise": LongVideoConfig(noise_rescheduling=True, temporal_windows=False, rope="none"),
    "windows": LongVideoConfig(noise_rescheduling=False, temporal_windows=True, rope="none"),
    "riflex": LongVideoConfig(noise_rescheduling=False, temporal_windows=False, rope="riflex", position_scale=1),
    "by_part_rope": LongVideoConfig(noise_rescheduling=False, temporal_windows=False, rope="by_part"),
    "defaults": LongVideoConfig(),
    "all": LongVideoConfig(noise_rescheduling=True, temporal_windows=True, rope="by_part"),
}


def prompts(n: int) -> list[str]:
    dirs = list(DIRECTIONS)
    return [video_prompt(COLORS[i % 6], SHAPES[(i // 2) % 3], dirs[i % 4]) for i in range(n)]


def judge(videos) -> dict:
    rows = []
    for v in videos:
        s = summarize_video(v)
        speed = None if s.velocity is None else float(np.hypot(*s.velocity))
        rows.append((s.persistent, bool(s.persistent and speed is not None and speed >= 0.2
                                        and (s.linearity or 0) >= 0.8)))
    n = len(rows)
    return {"persistent": sum(r[0] for r in rows) / n, "steady": sum(r[1] for r in rows) / n}


def run(pipe, frames: int, n: int, steps: int, config: LongVideoConfig | None):
    videos, seconds = [], 0.0
    for i, p in enumerate(prompts(n)):
        g = torch.Generator().manual_seed(2000 + i)
        t = time.perf_counter()
        if config is None:
            lat = torch.randn(1, 3, frames, 16, 16, generator=g)
            out = pipe(p, num_frames=frames, num_inference_steps=steps, latents=lat, output_type="np").frames
        else:
            out = long_video(pipe, p, num_frames=frames, config=config, num_inference_steps=steps, generator=g,
                             output_type="np").frames
        seconds += time.perf_counter() - t
        videos.append(out[0])
    return videos, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--frames", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "long_video.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline("shapes-video")
    pipe.set_progress_bar_config(disable=True)
    rows = []
    v8, t8 = run(pipe, 8, args.prompts, args.steps, None)
    rows.append({"frames": 8, "variant": "stock", **judge(v8), "time_ratio": 1.0})
    strip = {}
    for frames in args.frames:
        stock, t_stock = run(pipe, frames, args.prompts, args.steps, None)
        rows.append({"frames": frames, "variant": "stock", **judge(stock), "time_ratio": 1.0})
        strip[("stock", frames)] = stock[0]
        for name, cfg in VARIANTS.items():
            vids, t = run(pipe, frames, args.prompts, args.steps, cfg)
            rows.append({"frames": frames, "variant": name, **judge(vids), "time_ratio": t / t_stock})
            strip[(name, frames)] = vids[0]
            print(rows[-1], flush=True)
    result = {"prompts": args.prompts, "steps": args.steps, "loadavg": os.getloadavg(), "rows": rows,
              "torch_threads": 1}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    f = max(args.frames)
    lines = [np.concatenate(list(strip[(k, f)]), axis=1) for k in ("stock", "defaults")]
    img = (np.concatenate(lines, axis=0) * 255).round().astype(np.uint8)
    Image.fromarray(img).resize((img.shape[1] * 3, img.shape[0] * 3), Image.NEAREST).save(
        ROOT / "results" / "long_video_strip.png")
    print("| frames | variant | persistent | steady | time vs stock (same frames) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['frames']} | {r['variant']} | {r['persistent']:.0%} | {r['steady']:.0%} "
              f"| {r['time_ratio']:.2f} |")


if __name__ == "__main__":
    main()
