"""Command line: ``attnplug demo | generate | methods``.

Method options come from the config dataclasses' fields (``-o field=value``), so every method's settings are
reachable without CLI code per method.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger("attnplug.cli")


def parse_option(text: str) -> tuple[str, object]:
    """``"kernel_size=3,13,13"`` -> ``("kernel_size", (3, 13, 13))``; literals parsed, other text kept as str."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"method option {text!r} must look like field=value")
    key, raw = text.split("=", 1)
    lowered = raw.strip().lower()
    if lowered in ("true", "false", "none"):
        return key.strip(), {"true": True, "false": False, "none": None}[lowered]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if isinstance(value, list):
        value = tuple(value)
    return key.strip(), value


def _load(model: str):
    from .models import available_models, load_pipeline

    if model in available_models():
        return load_pipeline(model), False
    if model.startswith("tiny-"):
        import tempfile

        from .testing import tiny_pipeline

        return tiny_pipeline(model.removeprefix("tiny-"), tempfile.mkdtemp()), True
    raise SystemExit(
        f"error: unknown model {model!r}; embedded: {', '.join(available_models()) or 'none'}; "
        "random-weight test pipelines: tiny-sd, tiny-pixart, tiny-wan"
    )


def _save(result, out: Path, fps: int = 4) -> list[Path]:
    import imageio.v3 as iio
    import numpy as np

    out.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    if hasattr(result, "frames"):
        for i, video in enumerate(np.asarray(result.frames)):
            path = out.with_name(f"{out.stem}_{i}.gif") if len(result.frames) > 1 else out.with_suffix(".gif")
            iio.imwrite(path, (video * 255).round().astype(np.uint8), duration=1000 // fps, loop=0)
            paths.append(path)
    else:
        images = result.images
        for i, image in enumerate(images):
            path = out.with_name(f"{out.stem}_{i}.png") if len(images) > 1 else out.with_suffix(".png")
            image = np.asarray(image)
            if image.dtype != np.uint8:
                image = (image * 255).round().astype(np.uint8)
            iio.imwrite(path, image)
            paths.append(path)
    return paths


def generate(model, prompt, *, method="dense", options=None, out="outputs/sample", seed=0, **call_kwargs) -> dict:
    """Generate with ``model`` (an embedded model name or ``tiny-*``) and ``method`` (a name + ``options``, or a
    config); save the output and a JSON record (timing, attention counters, detected objects) next to it."""
    import torch

    import attnplug

    from .config import MethodConfig, config_from_options

    pipe, random_weights = _load(model)
    config = method if isinstance(method, MethodConfig) else config_from_options(method, options or {})
    kwargs = {k: v for k, v in call_kwargs.items() if v is not None}
    if random_weights:
        kwargs.setdefault("output_type", "np")
    attnplug.apply(pipe, config)
    start = time.perf_counter()
    result = pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs)
    seconds = time.perf_counter() - start
    record = {
        "model": model, "random_weights": random_weights, "prompt": prompt, "seed": seed, "seconds": seconds,
        "config": config.describe(), "call": kwargs, "attention": attnplug.stats(pipe),
    }
    attnplug.remove(pipe)
    paths = _save(result, Path(out))
    record["outputs"] = [str(p) for p in paths]
    if not random_weights:
        record["objects"] = _count_objects(result)
    Path(out).with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))
    return record


def _cmd_generate(args) -> int:
    record = generate(
        args.model, args.prompt, method=args.method, options=dict(args.option), out=args.out, seed=args.seed,
        height=args.height, width=args.width, num_inference_steps=args.steps, **(
            {"num_frames": args.frames} if args.frames else {}
        ),
    )
    if record["random_weights"]:
        print(f"note: {args.model} has RANDOM weights (a plumbing test): its output is noise.")
    print(f"{record['model']} / {args.method}: {record['seconds']:.2f} s -> {', '.join(record['outputs'])}")
    return 0


def _cmd_methods(args) -> int:
    from .config import method_configs

    for name, cls in method_configs().items():
        print(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else "(factory)"
            print(f"    {f.name} = {default!r}: {f.metadata.get('help', '')}")
    return 0


def _count_objects(result) -> list[int]:
    """Objects the classical detector finds per image (video: per frame of the first video)."""
    import numpy as np

    from .models import detect

    if hasattr(result, "frames"):
        return [detect(frame).count for frame in np.asarray(result.frames)[0]]
    return [detect(np.asarray(image)).count for image in result.images]


def _demo_jobs(models: list[str]) -> list[tuple]:
    from .methods import AgentConfig, NeighborhoodConfig

    jobs = []
    if "shapes-unet" in models:
        window = NeighborhoodConfig.from_training_resolution((16, 16), family="unet")
        jobs += [("shapes-unet", "red circle", 1, "dense"), ("shapes-unet", "red circle", 2, "dense"),
                 ("shapes-unet", "red circle", 2, window), ("shapes-unet", "red circle", 2, AgentConfig())]
    if "shapes-dit" in models:
        window = NeighborhoodConfig.from_training_resolution((8, 8))
        jobs += [("shapes-dit", "blue square", 1, "dense"), ("shapes-dit", "blue square", 2, "dense"),
                 ("shapes-dit", "blue square", 2, window)]
    if "shapes-video" in models:
        jobs.append(("shapes-video", "green triangle moving right", 1, "dense"))
    return jobs


def _cmd_demo(args) -> int:
    from tqdm.auto import tqdm

    from .models import available_models, load_pipeline

    out = Path(args.out)
    models = available_models()
    if not models:
        print("note: no embedded models are installed; the demo uses a tiny RANDOM-weight pipeline (output is noise).")
        record = generate("tiny-sd", "a red circle", out=str(out / "tiny-sd"), height=64, width=64,
                          num_inference_steps=4)
        print(f"  tiny-sd  {record['seconds']:.2f} s  {record['outputs'][0]}")
        return 0
    jobs = [job for job in _demo_jobs(models) if args.methods or job[3] == "dense"]
    print(f"attnplug demo: embedded models {', '.join(models)}; {len(jobs)} generations -> {out}/")
    rows = []
    for model, prompt, scale, method in tqdm(jobs, desc="demo", disable=None):
        defaults = load_pipeline(model).sample_defaults
        size = {"height": defaults["height"] * scale, "width": defaults["width"] * scale}
        name = method if isinstance(method, str) else method.name
        stem = out / f"{model}_{scale}x_{name}"
        record = generate(model, prompt, method=method, out=str(stem), seed=args.seed, **size)
        objects = record.get("objects", [])
        rows.append(f"  {model:13s} {scale}x {name:13s} {record['seconds']:6.2f} s  objects {objects}  "
                    f"{record['outputs'][0]}")
    print("\n".join(rows))
    print("(objects: what the classical detector finds per image/frame; 1 = the prompted shape, >1 = duplication)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnplug", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log attnplug's decisions")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="generate images and a video with the embedded models")
    demo.add_argument("--out", default="outputs/demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-methods", dest="methods", action="store_false", help="dense attention only")
    demo.set_defaults(func=_cmd_demo)

    gen = sub.add_parser("generate", help="generate one image/video with a method")
    gen.add_argument("prompt")
    gen.add_argument("--model", default="shapes-unet", help="embedded model name, or tiny-sd/tiny-pixart/tiny-wan")
    gen.add_argument("--method", default="dense", help="see `attnplug methods`")
    gen.add_argument("-o", "--option", type=parse_option, action="append", default=[],
                     help="method option field=value (repeatable), e.g. -o num_agents=64")
    gen.add_argument("--height", type=int)
    gen.add_argument("--width", type=int)
    gen.add_argument("--frames", type=int, help="video models: number of frames")
    gen.add_argument("--steps", type=int, help="denoising steps")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", default="outputs/sample", help="output path without extension")
    gen.set_defaults(func=_cmd_generate)

    methods = sub.add_parser("methods", help="list methods and their options")
    methods.set_defaults(func=_cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
