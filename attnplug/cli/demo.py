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


def _command(model: str, prompt: str, size: dict, seed: int, method) -> str:
    """The ``attnplug generate`` command that makes one demo output again."""
    import shlex

    from .options import format_option

    cmd = ["attnplug", "generate", prompt, "--model", model, "--height", str(size["height"]), "--width",
           str(size["width"]), "--seeds", str(seed)]
    if method == "hires":
        cmd.append("--hires")
    elif method.name != "dense":
        cmd += ["--method", method.name]
        default = type(method)()
        for key, value in method.describe().items():
            if key != "method" and value != getattr(default, key, value):
                cmd += ["-o", format_option(key, value)]
    return shlex.join(cmd)


def cmd_demo(args) -> int:
    """``attnplug demo``: the embedded models at 1x/2x with a few methods; each pipeline is loaded once. Writes each
    output with its record, then ``report.html`` and ``contact_sheet.png``, and prints where."""
    import dataclasses

    import torch
    from tqdm.auto import tqdm

    import attnplug

    from ..config import config_from_options
    from ..loading import load
    from ..models import available_models
    from ..report import (
        RECORD_MARK,
        as_float_array,
        environment,
        judge,
        run_label,
        save_media,
        save_previews,
        summarize_stats,
        write_json,
        write_report,
    )
    from ..report.sheet import contact_sheet

    out = check_out_dir(Path(args.out))
    models = available_models()
    if not models:
        raise UserError("no embedded models are installed; try `attnplug generate --model tiny-sd PROMPT`.")
    jobs = [job for job in _demo_jobs(models) if args.methods or job[3] == "dense"]
    print(f"attnplug demo: embedded models {', '.join(models)}; {len(jobs)} generations -> {out}/")
    for prompt in dict.fromkeys(job[1] for job in jobs):
        print(f"  prompt: {prompt!r}")
    env = environment("cpu")
    pipes: dict = {}
    rows, sheet = [], []
    for model, prompt, scale, method in tqdm(jobs, desc="demo", disable=None):
        if model not in pipes:
            pipes[model] = load(model)
        pipe = pipes[model]
        size = {"height": pipe.sample_defaults["height"] * scale, "width": pipe.sample_defaults["width"] * scale}
        generator = torch.Generator().manual_seed(args.seed)
        plan = hires_config = None
        if method == "hires":  # the hi-res pipeline (HiDiffusion / coarse-to-fine), not an attention method
            from ..pipelines import HiResConfig, hires, hires_plan

            config = HiResConfig(progress=False)
            start = time.perf_counter()
            result = hires(pipe, prompt, config=config, generator=generator, output_type="np", **size)
            seconds, stats, name = time.perf_counter() - start, {}, "dense"
            plan = dataclasses.asdict(hires_plan(pipe, size["height"], size["width"], config))
            hires_config = {k: v for k, v in dataclasses.asdict(config).items() if k != "attention"}
        else:
            config = config_from_options(method) if isinstance(method, str) else method
            with attnplug.applied(pipe, config):
                start = time.perf_counter()
                result = pipe(prompt, generator=generator, output_type="np", **size)
                seconds = time.perf_counter() - start
                stats = attnplug.stats(pipe)
            name = config.name
        label = run_label(name, plan, hires_config)
        media = as_float_array(result)[0]
        stem = out / f"{model}_{scale}x_{'hires' if plan else name}"
        path = save_media(media, stem, video_format="mp4")
        previews = {path.name: {k: p.name for k, p in save_previews(media, stem).items()}} if media.ndim == 4 else {}
        verdict = judge(media, prompt)
        slug = "-".join(prompt.split())
        write_json(stem.with_name(stem.name + ".json"), {
            RECORD_MARK: 1, "kind": "demo", "id": f"{slug}-s{args.seed}", "model": model, "prompt": prompt,
            "seed": args.seed, "settings": size, "method": name, "method_label": name, "reference": name == "dense"
            and plan is None, "plan": plan, "hires_config": hires_config, "seconds": seconds,
            "stats": summarize_stats(stats), "config": config.describe() if hasattr(config, "describe") else None,
            "detector": verdict, "outputs": [path.name], "previews": previews, "environment": env,
            "command": _command(model, prompt, size, args.seed, "hires" if plan else config)})
        objects = verdict.get("count", verdict.get("counts"))
        rows.append(f"  {model:13s} {scale}x {label[:60]:60s} {seconds:6.2f} s  objects {objects}")
        sheet.append((f"{model} {scale}x {label}", media))
    print("\n".join(rows))
    print("(objects: what the classical detector finds per image/frame; 1 = the prompted shape, >1 = duplication)")
    _, html_path = write_report(out)
    sheet_path = contact_sheet(sheet, out / "contact_sheet.png")
    print(f"report: {html_path}\ncontact sheet: {sheet_path}")
    return 0
