"""``attnplug demo``: the embedded models at 1x and 2x with a few methods; each pipeline is loaded once."""

from __future__ import annotations

import time
from pathlib import Path

from .checks import check_out_dir
from .errors import UserError


def _demo_jobs(models: list[str]) -> list[tuple]:
    from ..methods import AgentConfig, NeighborhoodConfig

    jobs = []
    if "shapes-unet" in models:
        jobs += [("shapes-unet", "red circle", 1, "dense"), ("shapes-unet", "red circle", 2, "dense"),
                 ("shapes-unet", "red circle", 2, AgentConfig()), ("shapes-unet", "red circle", 2, "hires")]
    if "shapes-dit" in models:
        window = NeighborhoodConfig.from_training_resolution((8, 8))
        jobs += [("shapes-dit", "blue square", 1, "dense"), ("shapes-dit", "blue square", 2, "dense"),
                 ("shapes-dit", "blue square", 2, window), ("shapes-dit", "blue square", 2, "hires")]
    if "shapes-video" in models:
        jobs.append(("shapes-video", "green triangle moving right", 1, "dense"))
    return jobs


def cmd_demo(args) -> int:
    """``attnplug demo``: the embedded models at 1x/2x with a few methods; each pipeline is loaded once."""
    from dataclasses import asdict

    import torch
    from tqdm.auto import tqdm

    import attnplug

    from ..config import config_from_options
    from ..loading import load
    from ..models import available_models
    from ..report import as_float_array, jsonable, judge, save_media, write_json

    out = check_out_dir(Path(args.out))
    models = available_models()
    if not models:
        raise UserError("no embedded models are installed; try `attnplug generate --model tiny-sd PROMPT`.")
    jobs = [job for job in _demo_jobs(models) if args.methods or job[3] == "dense"]
    print(f"attnplug demo: embedded models {', '.join(models)}; {len(jobs)} generations -> {out}/")
    pipes: dict = {}
    rows = []
    for model, prompt, scale, method in tqdm(jobs, desc="demo", disable=None):
        if model not in pipes:
            pipes[model] = load(model)
        pipe = pipes[model]
        size = {"height": pipe.sample_defaults["height"] * scale, "width": pipe.sample_defaults["width"] * scale}
        generator = torch.Generator().manual_seed(args.seed)
        if method == "hires":  # the hi-res pipeline (HiDiffusion / coarse-to-fine), not an attention method
            from ..pipelines import HiResConfig, hires

            config = HiResConfig(progress=False)
            start = time.perf_counter()
            result = hires(pipe, prompt, config=config, generator=generator, output_type="np", **size)
            seconds, stats, name = time.perf_counter() - start, {}, "hires"
        else:
            config = config_from_options(method) if isinstance(method, str) else method
            with attnplug.applied(pipe, config):
                start = time.perf_counter()
                result = pipe(prompt, generator=generator, output_type="np", **size)
                seconds = time.perf_counter() - start
                stats = attnplug.stats(pipe)
            name = config.name
        media = as_float_array(result)[0]
        stem = out / f"{model}_{scale}x_{name}"
        path = save_media(media, stem, video_format="mp4")
        verdict = judge(media, prompt)
        write_json(stem.with_suffix(".json"), {"model": model, "prompt": prompt, "seed": args.seed, "call": size,
                                               "seconds": seconds, "stats": stats,
                                               "config": jsonable(config.describe() if hasattr(config, "describe")
                                                                  else {"pipeline": name, **asdict(config)}),
                                               "detector": verdict, "outputs": [path.name]})
        objects = verdict.get("count", verdict.get("counts"))
        rows.append(f"  {model:13s} {scale}x {name:13s} {seconds:6.2f} s  objects {objects}  {path}")
    print("\n".join(rows))
    print("(objects: what the classical detector finds per image/frame; 1 = the prompted shape, >1 = duplication)")
    return 0


