"""Refit sweep for the long-video defaults: stock and candidate ``LongVideoConfig`` variants at one frame count, on
seeds ``9000 + prompt`` (disjoint from ``longvideo_bench.py``'s ``2000 + ...``), judged like the benchmark.

    python benchmarks/longvideo_refit.py --model shapes-video --frames 32 --prompts 8 \\
        --variants defaults,interp2,interp2_nowin,interp2_long,long

Appends one entry (model, weights digest, rows) to ``benchmarks/results/long_video_refit.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from longvideo_bench import LONG, VARIANTS, run_frames

from attnplug import SparseVideoConfig
from attnplug.models import load_pipeline
from attnplug.models.catalog import weights_digest
from attnplug.pipelines import LongVideoConfig

ROOT = Path(__file__).resolve().parent
# `_long` candidates run the pattern from the first step (global_steps=0) unless named `_gP` (first P % dense).
CANDIDATES = {
    **VARIANTS,
    "long": LongVideoConfig(global_steps=0, sparse=LONG),
    "long_norope": LongVideoConfig(global_steps=0, rope="none", sparse=LONG),
    "long_norope_a1": LongVideoConfig(global_steps=0, rope="none",
                                      sparse=SparseVideoConfig(pattern="long", anchor_frames=1)),
    "long_damp": LongVideoConfig(global_steps=0, damping=True, sparse=LONG),
    "long_norope_damp": LongVideoConfig(global_steps=0, rope="none", damping=True, sparse=LONG),
    "damping": LongVideoConfig(damping=True, sparse=None),
    "windows_norope_all": LongVideoConfig(rope="none", temporal_windows=True, global_steps=0),
    "windows_norope_noise_all": LongVideoConfig(rope="none", temporal_windows=True, global_steps=0,
                                                noise_rescheduling=True),
    "windows_norope_half": LongVideoConfig(rope="none", temporal_windows=True, global_steps=0.5),
    "interp15": LongVideoConfig(position_scale=1.5, sparse=None),
    "interp2": LongVideoConfig(position_scale=2, sparse=None),
    "interp2_nowin": LongVideoConfig(position_scale=2, temporal_windows=False, sparse=None),
    "interp2_long": LongVideoConfig(global_steps=0, position_scale=2, sparse=LONG),
    "interp15_long": LongVideoConfig(global_steps=0, position_scale=1.5, sparse=LONG),
    "interp25_long": LongVideoConfig(global_steps=0, position_scale=2.5, sparse=LONG),
    "interp2_long_w6": LongVideoConfig(global_steps=0, position_scale=2,
                                       sparse=SparseVideoConfig(pattern="long", window_frames=6)),
    "interp2_long_damp": LongVideoConfig(global_steps=0, position_scale=2, damping=True, sparse=LONG),
    "interp2_long_w6_damp": LongVideoConfig(global_steps=0, position_scale=2, damping=True,
                                            sparse=SparseVideoConfig(pattern="long", window_frames=6)),
    "interp1_long": LongVideoConfig(global_steps=0, position_scale=1, sparse=LONG),
    "long_norope_a0": LongVideoConfig(global_steps=0, rope="none",
                                      sparse=SparseVideoConfig(pattern="long", anchor_frames=0)),
    "interp15_long_damp": LongVideoConfig(global_steps=0, position_scale=1.5, damping=True, sparse=LONG),
    "interp2_long_g25": LongVideoConfig(position_scale=2, sparse=LONG, global_steps=0.25),
    "interp2_long_g50": LongVideoConfig(position_scale=2, sparse=LONG, global_steps=0.5),
    "interp3_long_g50": LongVideoConfig(position_scale=3, sparse=LONG, global_steps=0.5),
    "interp2_long_g50_damp": LongVideoConfig(position_scale=2, damping=True, sparse=LONG, global_steps=0.5),
    "long_g75": LongVideoConfig(sparse=LONG, global_steps=0.75),
    "long_g90": LongVideoConfig(sparse=LONG, global_steps=0.9),
    "interp4": LongVideoConfig(position_scale=4, temporal_windows=False, sparse=None),
    "interp4_long_g75": LongVideoConfig(position_scale=4, sparse=LONG, global_steps=0.75),
    "interp25_long_g75": LongVideoConfig(position_scale=2.5, sparse=LONG, global_steps=0.75),
    "interp3_long_g75": LongVideoConfig(position_scale=3, sparse=LONG, global_steps=0.75),
    "interp35_long_g75": LongVideoConfig(position_scale=3.5, sparse=LONG, global_steps=0.75),
    "interp2_long_g75": LongVideoConfig(position_scale=2, sparse=LONG, global_steps=0.75),
    "defaults_w6": LongVideoConfig(sparse=SparseVideoConfig(pattern="long", window_frames=6)),
    # by-part interpolation: only the components whose period exceeds the training length are divided
    "bypart4": LongVideoConfig(rope="by_part", position_scale=4, temporal_windows=False, sparse=None),
    "bypart4_long": LongVideoConfig(rope="by_part", position_scale=4, sparse=LONG, global_steps=0),
    "bypart4_long_g50": LongVideoConfig(rope="by_part", position_scale=4, sparse=LONG, global_steps=0.5),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes-video")
    ap.add_argument("--label", default=None, help="the model's name in the entry (default: --model)")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--variants", required=True, help=f"comma-separated, of: {', '.join(CANDIDATES)}")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "long_video_refit.json")
    args = ap.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in CANDIDATES]
    if unknown or not names:
        ap.error(f"--variants={args.variants!r}: unknown {unknown or 'none given'}; accepted: {', '.join(CANDIDATES)}")
    torch.set_num_threads(1)
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    rows = run_frames(pipe, args.frames, args.prompts, args.steps,
                      {"stock": None, **{k: CANDIDATES[k] for k in names}}, 1, base=9000)
    entry = {"model": args.label or str(args.model), "weights": weights_digest(args.model), "frames": args.frames,
             "prompts": args.prompts, "seeds": "9000 + prompt", "steps": args.steps, "loadavg": os.getloadavg(),
             "rows": rows}
    runs = json.loads(args.out.read_text()) if args.out.exists() else []
    args.out.write_text(json.dumps([*runs, entry], indent=1) + "\n")
    for r in rows:
        print(f"| {r['variant']} | {r['persistent']:.0%} | {r['steady']:.0%} | {r['steady_path']:.0%} | "
              f"{r['median_speed']:.2f} | {r['median_r2']:.2f} | {r['time_ratio']:.2f} |")


if __name__ == "__main__":
    main()
