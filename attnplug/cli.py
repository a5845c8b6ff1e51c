"""Command line: ``attnplug generate | bench | report | methods | demo | ui``.

Method options come from the config dataclasses' field metadata (``-o field=value``), so every method's settings
are reachable without CLI code per method. Everything the user typed is checked before a model loads.
Data parallel: ``torchrun --nproc_per_node N -m attnplug generate ...`` (CPU or GPU) or
``accelerate launch --num_processes N -m attnplug generate ...`` (GPU) split prompts x seeds across processes.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import hashlib
import json
import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path

logger = logging.getLogger("attnplug.cli")

STOCK = "stock"  # bench pseudo-method: the pipeline without attnplug
SCHEDULE_FLAGS = ("warmup_steps", "until_step", "skip_first_layers", "skip_last_layers", "layers")
JSONL_KEYS = {"prompt", "negative_prompt", "height", "width", "frames", "steps", "guidance", "seeds", "num_images"}


class UserError(Exception):
    """A mistake in what the user typed: printed as one line, exit code 2, no stack trace."""


# ----------------------------------------------------------------------------------------------------------------
# Options


def parse_option(text: str) -> tuple[str, object]:
    """``"kernel_size=3,13,13"`` -> ``("kernel_size", (3, 13, 13))``. Python literals are parsed, ``true``/``false``
    in any case are booleans, anything else (``none``, ``tiles``) stays a string; :func:`coerce_options` then
    turns ``"none"`` into ``None`` for fields that take None but have no ``'none'`` choice."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"method option {text!r} must look like field=value, e.g. agents=64")
    key, raw = text.split("=", 1)
    raw = raw.strip()
    if raw.lower() in ("true", "false"):
        return key.strip(), raw.lower() == "true"
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if isinstance(value, list):
        value = tuple(value)
    return key.strip(), value


def _field_owners(field: str) -> list[str]:
    from .config import method_configs

    return [name for name, cls in method_configs().items() if field in {f.name for f in dataclasses.fields(cls)}]


def coerce_options(method: str, options: dict) -> dict:
    """Check ``options`` against method ``method``'s field metadata and adapt typed text (``none``) to the field.

    ``UserError`` for an unknown field (closest field suggested; "did you forget --method?" when the field belongs
    to another method).
    """
    from .config import field_specs, method_configs

    specs = {s.name: s for s in field_specs(method_configs()[method])}
    out = {}
    for key, value in options.items():
        if key not in specs:
            close = difflib.get_close_matches(key, list(specs), n=1, cutoff=0.6)
            owners = [m for m in _field_owners(key) if m != method]
            hint = f" Did you mean {close[0]!r}?" if close else ""
            if owners:
                hint += f" {key!r} is an option of {', '.join(owners)}: did you forget --method {owners[0]}?"
            raise UserError(f"method {method!r} has no option {key!r}; its options: "
                            f"{', '.join(specs) or '(none)'}.{hint}")
        spec = specs[key]
        if isinstance(value, str) and value.lower() == "none":
            if spec.choices and "none" in spec.choices:
                value = "none"
            elif "None" in spec.type or spec.default is None:
                value = None
        elif value is None and spec.choices and "none" in spec.choices:
            value = "none"
        out[key] = value
    return out


def build_config(method: str, options: dict):
    """The validated method config for ``method`` and ``options``; ``UserError`` naming what is accepted."""
    from .config import config_from_options, method_configs

    configs = method_configs()
    if method not in configs:
        close = difflib.get_close_matches(method, list(configs), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(configs)}.{hint}")
    options = coerce_options(method, options)
    try:
        return config_from_options(method, options)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None


def build_schedule(args):
    """A :class:`attnplug.Schedule` from the schedule flags, or None when none is given (the method's default)."""
    from .config import Schedule

    values = {name: getattr(args, name) for name in SCHEDULE_FLAGS if getattr(args, name, None) is not None}
    if not values:
        return None
    if "until_step" in values:
        text = values["until_step"]
        values["until_step"] = float(text) if "." in text else int(text)
    if "layers" in values:
        text = values["layers"]
        values["layers"] = tuple(int(x) for x in text.split(",")) if re.fullmatch(r"-?\d+(,-?\d+)*", text) else text
    try:
        return Schedule(**values)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-3"`` -> seeds."""
    seeds: list[int] = []
    try:
        for part in str(text).split(","):
            part = part.strip()
            if re.fullmatch(r"\d+-\d+", part):
                lo, hi = map(int, part.split("-"))
                seeds.extend(range(lo, hi + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise UserError(f"--seeds {text!r} must be integers like 0,1,2 or a range like 0-3.") from None
    if not seeds:
        raise UserError(f"--seeds {text!r} gives no seed.")
    return seeds


# ----------------------------------------------------------------------------------------------------------------
# Prompts and items


@dataclasses.dataclass
class Item:
    """One prompt x seed to generate: ``call`` holds the per-item call settings (CLI defaults + file overrides)."""

    index: int
    prompt: str
    seed: int
    call: dict
    source: str = ""

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.prompt.lower()).strip("-")[:40] or "prompt"
        return f"{self.index:03d}-{slug}-s{self.seed}"


def _positive(name: str, value, *, allow_zero: bool = False):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise UserError(f"{name}={value!r} must be an integer >= {0 if allow_zero else 1}.")
    return value


def base_call(args) -> dict:
    """The call settings common to every prompt, from the command line (None = the pipeline's default)."""
    call = {"height": args.height, "width": args.width, "frames": args.frames, "steps": args.steps,
            "guidance": args.guidance, "negative_prompt": args.negative_prompt,
            "num_images": getattr(args, "num_images", 1)}
    for name in ("height", "width", "frames", "steps", "num_images"):
        _positive(f"--{name.replace('_', '-')}", call[name])
    if call["guidance"] is not None and call["guidance"] < 0:
        raise UserError(f"--guidance={call['guidance']!r} must be >= 0.")
    return call


def read_prompts(args) -> list[tuple[str, dict, str]]:
    """Prompts with their per-line overrides and source: positional prompts, then ``--prompt-file`` lines
    (``.jsonl``: one JSON object per line with ``prompt`` and optional overrides; otherwise one prompt per line,
    ``#`` comments and blank lines skipped). ``UserError`` naming the file and line number."""
    prompts = [(p, {}, "argument") for p in (args.prompt or [])]
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise UserError(f"--prompt-file {str(path)!r} does not exist.")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--prompt-file {str(path)!r} cannot be read: {exc}") from None
        jsonl = path.suffix.lower() in (".jsonl", ".json")
        for n, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            where = f"{path}:{n}"
            if not jsonl:
                prompts.append((text, {}, where))
                continue
            try:
                entry = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}).") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
                raise UserError(f"{where}: each line must be a JSON object with a non-empty \"prompt\" string.")
            unknown = sorted(set(entry) - JSONL_KEYS)
            if unknown:
                raise UserError(f"{where}: unknown key(s) {unknown}; accepted: {', '.join(sorted(JSONL_KEYS))}.")
            overrides = {k: v for k, v in entry.items() if k != "prompt"}
            try:
                for name in ("height", "width", "frames", "steps", "num_images"):
                    _positive(name, overrides.get(name))
                if "guidance" in overrides and not isinstance(overrides["guidance"], (int, float)):
                    raise UserError(f"guidance={overrides['guidance']!r} must be a number")
                if "seeds" in overrides:
                    seeds = overrides["seeds"]
                    overrides["seeds"] = [seeds] if isinstance(seeds, int) else \
                        parse_seeds(seeds if isinstance(seeds, str) else ",".join(map(str, seeds)))
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None
            prompts.append((entry["prompt"], overrides, where))
    if not prompts:
        raise UserError("no prompt given: pass PROMPT arguments or --prompt-file FILE.")
    return prompts


def make_items(args) -> list[Item]:
    """Every prompt x seed, in a fixed order (the same in every process)."""
    call = base_call(args)
    seeds = parse_seeds(args.seeds)
    items = []
    for index, (prompt, overrides, source) in enumerate(read_prompts(args)):
        item_call = {**call, **{k: v for k, v in overrides.items() if k != "seeds"}}
        for seed in overrides.get("seeds", seeds):
            items.append(Item(index, prompt, seed, item_call, source))
    return items


# ----------------------------------------------------------------------------------------------------------------
# Checks done before any model loads


def check_out_dir(out: Path) -> Path:
    """Create ``out`` and prove it is writable; ``UserError`` otherwise."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".attnplug-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--out {str(out)!r} is not writable ({exc.strerror or exc}).") from None
    return out


def check_model(args):
    """Resolve ``--model``, ``--device`` and ``--dtype`` without loading; ``UserError`` with the reason."""
    from .loading import check_device, parse_dtype, resolve

    try:
        source = resolve(args.model)
        device = check_device(args.device)
        dtype = parse_dtype(args.dtype)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None
    return source, device, dtype


def _embedded_family(source) -> str | None:
    from .models.loader import resolve_model_dir

    if source.kind != "embedded":
        return None
    cfg = json.loads((resolve_model_dir(source.path or source.name) / "config.json").read_text())
    return cfg.get("family")


def check_call_against_model(source, items: list[Item]) -> None:
    """Reject settings the model cannot take, for embedded and tiny models (known without loading)."""
    family = _embedded_family(source)
    is_video = family == "video" or source.name in ("tiny-wan", "tiny-animatediff")
    if family is None and source.kind != "tiny":
        return
    for item in items:
        if item.call.get("frames") is not None and not is_video:
            raise UserError(f"--frames is for video models; {source.name!r} makes images ({item.source}).")
        if item.call.get("negative_prompt") and family is not None:
            raise UserError(f"--negative-prompt is not supported by the embedded model {source.name!r} "
                            f"({item.source}).")


def check_extension(name: str):
    """``attnplug.pipelines.<name>`` (hires / long_video) or ``UserError`` if this install lacks it."""
    try:
        import attnplug.pipelines as pipelines

        return getattr(pipelines, name)
    except (ImportError, AttributeError) as exc:
        flag = "--hires" if name == "hires" else "--long-video"
        raise UserError(f"{flag} needs attnplug.pipelines.{name}, which this install does not provide "
                        f"({type(exc).__name__}: {exc}).") from None


def extension_config(name: str, options: list[tuple[str, object]]):
    """The ``HiResConfig`` / ``LongVideoConfig`` for ``--hires-option`` / ``--long-video-option`` values (None when
    none is given: the pipeline's defaults); ``UserError`` for an unknown field or a bad value."""
    if not options:
        return None
    cls_name = {"hires": "HiResConfig", "long_video": "LongVideoConfig"}[name]
    flag = "--hires-option" if name == "hires" else "--long-video-option"
    try:
        import attnplug.pipelines as pipelines

        cls = getattr(pipelines, cls_name)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"{flag} needs attnplug.pipelines.{cls_name} ({type(exc).__name__}: {exc}).") from None
    fields = [f.name for f in dataclasses.fields(cls)]
    values = dict(options)
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
            raise UserError(f"{flag}: {cls_name} has no field {key!r}; its fields: {', '.join(fields)}."
                            + (f" Did you mean {close[0]!r}?" if close else ""))
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{flag}: {exc}") from None


# ----------------------------------------------------------------------------------------------------------------
# Running


def _distributed_state(device: str):
    """accelerate's ``PartialState`` when launched with several processes (torchrun / accelerate launch), else
    None. On CPU it is created with ``cpu=True``: without it a CPU launch silently runs N full copies."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
            logger.warning("`accelerate launch --cpu` starts ONE process without MPI; for N CPU processes use "
                           "`torchrun --nproc_per_node N -m attnplug ...` or "
                           "`accelerate launch --multi_gpu --num_processes N -m attnplug ... --device cpu`.")
        return None
    from accelerate import PartialState

    state = PartialState(cpu=device.startswith("cpu"))
    if state.num_processes != world:
        raise UserError(f"launched with WORLD_SIZE={world} but accelerate formed {state.num_processes} process(es).")
    return state


def _set_threads(args, state) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    elif state is not None and args.device.startswith("cpu") and "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def _call_kwargs(pipe, item: Item, *, num_images: bool = True) -> dict:
    """Pipeline keyword arguments for ``item``, named as the pipeline's ``__call__`` names them."""
    import inspect

    params = inspect.signature(pipe.__call__).parameters
    call = item.call
    kwargs = {}
    mapping = {"height": "height", "width": "width", "frames": "num_frames", "steps": "num_inference_steps",
               "guidance": "guidance_scale", "negative_prompt": "negative_prompt"}
    for key, name in mapping.items():
        value = call.get(key)
        if value is None:
            continue
        if name not in params:
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} is not accepted by {type(pipe).__name__} ({item.source}).")
        kwargs[name] = value
    k = call.get("num_images") or 1
    if num_images and k != 1:
        name = "num_videos_per_prompt" if "num_videos_per_prompt" in params else "num_images_per_prompt"
        kwargs[name] = k
    if "output_type" in params:
        kwargs["output_type"] = "np"
    return kwargs


def long_video_sparse(config, method_label: str):
    """The sparse pattern ``--long-video`` runs inside its temporal windows for ``--method`` (None for dense);
    ``UserError`` for any other method, which would replace the windows."""
    from .methods.dense import DenseConfig
    from .methods.sparse_video import SparseVideoConfig

    if config is None or isinstance(config, DenseConfig):
        return None
    if isinstance(config, SparseVideoConfig):
        return config
    raise UserError(f"--long-video runs its own temporal-window attention; --method {method_label} cannot run with "
                    "it (only sparse_video runs inside the windows).")


def check_long_video_methods(args, configs: dict, schedule) -> None:
    """With ``--long-video``: every method must be dense or sparse_video, and no schedule flag is given (long_video
    schedules its windows itself); ``UserError`` otherwise."""
    if not args.long_video:
        return
    for label, config in configs.items():
        long_video_sparse(config, label)
    if schedule is not None:
        raise UserError("--long-video schedules its own attention (LongVideoConfig.global_steps); the schedule flags "
                        "cannot be combined with it.")


def _run_pipe(pipe, item: Item, args, kwargs: dict, method=None):
    """One pipeline call for ``item``; with ``--long-video``, ``method`` (a sparse_video config or dense) runs
    inside the temporal windows instead of being applied beforehand."""
    import torch

    generator = torch.Generator("cpu").manual_seed(item.seed)
    if args.hires:
        fn = check_extension("hires")
        extra = {k: v for k, v in kwargs.items() if k not in ("height", "width")}
        if "height" not in kwargs or "width" not in kwargs:
            raise UserError(f"--hires needs --height and --width (the target size) ({item.source}).")
        config = extension_config("hires", args.hires_option)
        return fn(pipe, item.prompt, height=kwargs["height"], width=kwargs["width"], generator=generator,
                  **({"config": config} if config is not None else {}), **extra)
    if args.long_video:
        fn = check_extension("long_video")
        extra = {k: v for k, v in kwargs.items() if k != "num_frames"}
        if "num_frames" not in kwargs:
            raise UserError(f"--long-video needs --frames (the target length) ({item.source}).")
        config = extension_config("long_video", args.long_video_option)
        sparse = long_video_sparse(method, getattr(method, "name", "dense"))
        if sparse is not None:
            import attnplug.pipelines as pipelines

            config = dataclasses.replace(config or pipelines.LongVideoConfig(), sparse=sparse)
        return fn(pipe, item.prompt, num_frames=kwargs["num_frames"], generator=generator,
                  **({"config": config} if config is not None else {}), **extra)
    return pipe(item.prompt, generator=generator, **kwargs)


def _versions() -> dict:
    from .report import environment

    return environment("cpu")["versions"]


def _item_command(args, item: Item, method_label: str, options: dict) -> str:
    """A command line that regenerates ``item`` alone."""
    cmd = ["attnplug", "generate", item.prompt, "--model", args.model, "--seeds", str(item.seed)]
    if method_label != "dense":
        cmd += ["--method", method_label]
    for key, value in options.items():
        cmd += ["-o", f"{key}={','.join(map(str, value)) if isinstance(value, tuple) else value}"]
    flags = {"height": "--height", "width": "--width", "frames": "--frames", "steps": "--steps",
             "guidance": "--guidance", "negative_prompt": "--negative-prompt", "num_images": "--num-images"}
    for key, flag in flags.items():
        value = item.call.get(key)
        if value is not None and not (key == "num_images" and value == 1):
            cmd += [flag, str(value)]
    for name in SCHEDULE_FLAGS:
        if getattr(args, name, None) is not None:
            cmd += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    cmd += ["--device", args.device] + (["--dtype", args.dtype] if args.dtype else [])
    if args.hires:
        cmd.append("--hires")
    if args.long_video:
        cmd.append("--long-video")
    cmd += ["--video-format", args.video_format, "--fps", str(args.fps), "--out", str(args.out)]
    return shlex.join(cmd)


def _recipe_key(args, item: Item, config, schedule) -> str:
    recipe = {"model": args.model, "prompt": item.prompt, "seed": item.seed, "call": item.call,
              "config": config.describe() if config is not None else STOCK,
              "schedule": dataclasses.asdict(schedule) if schedule is not None else None, "dtype": args.dtype,
              "hires": args.hires, "long_video": args.long_video, "video_format": args.video_format,
              "fps": args.fps, "ext": [list(getattr(args, "hires_option", [])),
                                       list(getattr(args, "long_video_option", []))]}
    text = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finished(sidecar: Path, key: str, out: Path, overwrite: bool) -> bool:
    """Whether ``sidecar`` records a finished item made by the same recipe; ``UserError`` for another recipe."""
    if not sidecar.is_file():
        return False
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if record.get("key") != key:
        if overwrite:
            return False
        raise UserError(f"{sidecar} was made by a different command (model, method, options or call settings "
                        "differ); use another --out or pass --overwrite.")
    return all((out / rel).is_file() for rel in record.get("outputs", []))


def _clean_partials(out: Path, ids: list[str]) -> None:
    """Remove what an interrupted run of these items left half-written (temporary ``.NAME.part.EXT`` files)."""
    for item_id in ids:
        for path in [*out.glob(f".{item_id}*.part.*"), *(out / "media" / item_id).glob(".*.part.*")]:
            try:
                path.unlink()
            except OSError:
                pass


def _save_outputs(result, stem: Path, args) -> tuple[list[Path], list]:
    """Save every image/video of ``result`` as ``stem[_k].png|mp4|gif``; returns the paths and the arrays."""
    from .report import as_float_array, save_media

    arr = as_float_array(result)
    paths, media = [], []
    for k, one in enumerate(arr):
        target = stem if len(arr) == 1 else stem.with_name(f"{stem.name}_{k}")
        paths.append(save_media(one, target, video_format=args.video_format, fps=args.fps))
        media.append(one)
    return paths, media


def _judge_all(source, media: list, prompt: str) -> list[dict] | None:
    if source.kind != "embedded":
        return None
    from .report import judge

    return [judge(m, prompt) for m in media]


def _progress(pipe, args) -> None:
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True if args.no_progress else None, leave=False, position=1)


def _prepare(args):
    """Everything checked before a model loads; returns (items, source, device, dtype, state)."""
    from .report import REPORT_JSON  # noqa: F401 - fail early if the report module cannot import

    source, device, dtype = check_model(args)
    args.device = device
    items = make_items(args)
    check_call_against_model(source, items)
    if args.hires and args.long_video:
        raise UserError("--hires and --long-video cannot be combined.")
    if args.hires_option and not args.hires:
        raise UserError("--hires-option needs --hires.")
    if args.long_video_option and not args.long_video:
        raise UserError("--long-video-option needs --long-video.")
    if args.hires:
        check_extension("hires")
        extension_config("hires", args.hires_option)
        if any(it.call.get("height") is None or it.call.get("width") is None for it in items):
            raise UserError("--hires needs --height and --width (the target size).")
    if args.long_video:
        check_extension("long_video")
        extension_config("long_video", args.long_video_option)
        if any(it.call.get("frames") is None for it in items):
            raise UserError("--long-video needs --frames (the target length).")
    out = check_out_dir(Path(args.out))
    state = _distributed_state(device)
    _set_threads(args, state)
    del out
    return items, source, device, dtype, state


def _split(items: list, state):
    if state is None:
        return items, 0
    with state.split_between_processes(items) as mine:
        return list(mine), state.process_index


def _load(args, device, dtype, source):
    """Load the pipeline; unless ``-v``, transformers' notes about optional image processors are silenced."""
    from .loading import load

    if source.kind != "embedded" and not getattr(args, "verbose", 0):
        try:
            import transformers

            transformers.logging.set_verbosity_error()
        except ImportError:  # pragma: no cover - diffusers pipelines with text encoders need it
            pass
    return load(args.model, device=device, dtype=dtype)


def _base_record(args, item: Item, source, device, dtype, rank: int) -> dict:
    from .report import RECORD_MARK

    return {
        RECORD_MARK: 1, "id": item.id, "prompt": item.prompt, "seed": item.seed, "source": item.source,
        "model": args.model, "model_kind": source.kind, "random_weights": source.random_weights,
        "device": device, "dtype": str(dtype) if dtype is not None else "model default", "rank": rank,
        "settings": item.call, "hires": args.hires, "long_video": args.long_video,
    }


def cmd_generate(args) -> int:
    """``attnplug generate``: every prompt x seed with one method; resumable; data parallel when launched so."""
    from tqdm.auto import tqdm

    config = build_config(args.method, dict(args.option))
    options = coerce_options(args.method, dict(args.option))
    schedule = build_schedule(args)
    check_long_video_methods(args, {args.method: config}, schedule)
    items, source, device, dtype, state = _prepare(args)
    out = Path(args.out)
    keys = {item.id: _recipe_key(args, item, config, schedule) for item in items}
    mine, rank = _split(items, state)
    todo = [it for it in mine if not _finished(out / f"{it.id}.json", keys[it.id], out, args.overwrite)]
    _clean_partials(out, [it.id for it in todo])
    skipped = len(mine) - len(todo)
    if source.random_weights and rank == 0:
        print(f"note: {args.model} has RANDOM weights (a plumbing test): its output is noise.")
    totals = {"method": 0, "stock": 0, "self_calls": 0, "seconds": 0.0}
    if todo:
        import attnplug

        from .report import environment, measure, summarize_stats, write_json

        pipe = _load(args, device, dtype, source)
        _progress(pipe, args)
        if not args.long_video:  # long_video applies its own method, with --method's sparse pattern inside
            attnplug.apply(pipe, config, schedule=schedule)
        env = environment(device)
        try:
            for item in tqdm(todo, desc=f"generate [{rank}]" if state else "generate", disable=args.no_progress or
                             None, unit="item"):
                kwargs = _call_kwargs(pipe, item)
                attnplug.reset_stats(pipe)
                with measure(pipe, device) as m:
                    result = _run_pipe(pipe, item, args, kwargs, config)
                raw_stats = attnplug.stats(pipe)
                stats = summarize_stats(raw_stats)
                paths, media = _save_outputs(result, out / item.id, args)
                record = {**_base_record(args, item, source, device, dtype, rank), "kind": "generate",
                          "key": keys[item.id], "method": args.method, "method_label": args.method,
                          "config": config.describe(),
                          "schedule": dataclasses.asdict(schedule) if schedule is not None else None,
                          "call": {k: v for k, v in kwargs.items()}, "seconds": m["seconds"], "timing": m["timing"],
                          "memory": m["memory"], "stats": stats, "stats_raw": raw_stats,
                          "detector": (_judge_all(source, media, item.prompt) or [None])[0],
                          "detector_all": _judge_all(source, media, item.prompt),
                          "outputs": [str(p.relative_to(out)) for p in paths], "environment": env,
                          "command": _item_command(args, item, args.method, options)}
                write_json(out / f"{item.id}.json", record)
                for key in ("method", "stock", "self_calls"):
                    totals[key] += stats.get(key) or 0
                totals["seconds"] += m["seconds"]
        finally:
            attnplug.remove(pipe)
    if state is not None:
        state.wait_for_everyone()
    if rank == 0:
        from .report import write_report

        json_path, html_path = write_report(out)
        merged = json.loads(json_path.read_text())
        where = f" by process 0 of {state.num_processes}" if state else ""
        calls = ("attention counters: not kept by --long-video (its method is removed after each call)"
                 if args.long_video else f"self-attention calls: {totals['method']} method, {totals['stock']} stock "
                 f"of {totals['self_calls']}")
        print(f"{args.model} / {args.method}: {len(todo)} generated{where}, {skipped} already done, "
              f"{totals['seconds']:.2f} s; {calls}; {merged['items']} item(s) in {out}/ ({html_path.name})")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# bench


def parse_methods(text: str) -> list[tuple[str, str, dict]]:
    """``"dense,agent[agents=16;max_level=1],neighborhood"`` -> ``[(label, name, options), ...]``."""
    entries, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            entries.append(cur)
            cur = ""
            continue
        depth += ch == "["
        depth -= ch == "]"
        cur += ch
    entries.append(cur)
    out = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        m = re.fullmatch(r"([\w-]+)(?:\[(.*)\])?", entry)
        if not m:
            raise UserError(f"--methods entry {entry!r} must look like name or name[field=value;field=value].")
        options = dict(parse_option(o) for o in (m.group(2) or "").split(";") if o.strip())
        out.append((entry, m.group(1), options))
    labels = [label for label, _, _ in out]
    if len(set(labels)) != len(labels):
        raise UserError(f"--methods {text!r} names a method twice.")
    return out


def cmd_bench(args) -> int:
    """``attnplug bench``: each method vs the dense run of the same seed, timed warmed-up and interleaved."""
    from tqdm.auto import tqdm

    methods = parse_methods(args.methods)
    configs = {}
    for label, name, options in methods:
        configs[label] = None if name == STOCK else build_config(name, options)
    reference = "dense" if "dense" in configs else STOCK if STOCK in configs else None
    if reference is None:
        configs = {"dense": build_config("dense", {}), **configs}
        methods = [("dense", "dense", {})] + methods
        reference = "dense"
    schedule = build_schedule(args)
    check_long_video_methods(args, configs, schedule)
    items, source, device, dtype, state = _prepare(args)
    out = Path(args.out)
    mine, rank = _split(items, state)
    keys = {(it.id, label): _recipe_key(args, it, configs[label], schedule) for it in items for label in configs}

    def sidecar(item, label):
        return out / "media" / item.id / f"{re.sub(r'[^A-Za-z0-9_.=-]+', '_', label)}.json"

    todo = [it for it in mine if not all(_finished(sidecar(it, label), keys[(it.id, label)], out, args.overwrite)
                                         for label in configs)]
    _clean_partials(out, [it.id for it in todo])
    if todo:
        import attnplug

        from .report import (
            as_float_array,
            environment,
            fidelity,
            measure,
            sparsity_of,
            summarize_stats,
            write_json,
        )

        pipe = _load(args, device, dtype, source)
        _progress(pipe, args)
        env = environment(device)

        def run(label, item):
            config = configs[label]
            if config is not None and not args.long_video:
                attnplug.apply(pipe, config, schedule=schedule)
            try:
                kwargs = _call_kwargs(pipe, item)
                with measure(pipe, device) as m:
                    result = _run_pipe(pipe, item, args, kwargs, config)
                raw = attnplug.stats(pipe) if config is not None else {}
            finally:
                if config is not None:
                    attnplug.remove(pipe)
            return {"result": result, "m": m, "raw": raw, "kwargs": kwargs}

        labels = list(configs)
        for _ in range(args.warmup):
            for label in labels:
                run(label, todo[0])
        for item in tqdm(todo, desc=f"bench [{rank}]" if state else "bench", disable=args.no_progress or None,
                         unit="item"):
            runs: dict[str, list] = {label: [] for label in labels}
            for r in range(args.repeats):
                order = labels[r % len(labels):] + labels[:r % len(labels)]
                for label in order:
                    runs[label].append(run(label, item))
            median = {label: sorted(x["m"]["seconds"] for x in rs)[len(rs) // 2] for label, rs in runs.items()}
            ref = as_float_array(runs[reference][-1]["result"])
            for label, (_, name, options) in zip(labels, methods, strict=False):
                last = runs[label][-1]
                stem = sidecar(item, label).with_suffix("")
                stem.parent.mkdir(parents=True, exist_ok=True)
                paths, media = _save_outputs(last["result"], stem, args)
                arr = as_float_array(last["result"])
                stats = summarize_stats(last["raw"])
                config = configs[label]
                record = {**_base_record(args, item, source, device, dtype, rank), "kind": "bench",
                          "key": keys[(item.id, label)], "method": name, "method_label": label,
                          "reference": label == reference, "config": config.describe() if config else STOCK,
                          "schedule": dataclasses.asdict(schedule) if schedule is not None else None,
                          "call": last["kwargs"], "seconds": median[label],
                          "seconds_all": [x["m"]["seconds"] for x in runs[label]],
                          "reference_seconds": median[reference], "speedup": median[reference] / median[label],
                          "timing": last["m"]["timing"], "memory": last["m"]["memory"],
                          "fidelity": fidelity(arr, ref), "stats": stats, "stats_raw": last["raw"],
                          "density": sparsity_of(stats.get("method_report")),
                          "detector": (_judge_all(source, media, item.prompt) or [None])[0],
                          "outputs": [str(p.relative_to(out)) for p in paths], "environment": env,
                          "warmup": args.warmup, "repeats": args.repeats,
                          "command": _item_command(args, item, name, options) if name != STOCK else None}
                write_json(sidecar(item, label), record)
    if state is not None:
        state.wait_for_everyone()
    if rank == 0:
        from .report import build_report, write_report

        json_path, html_path = write_report(out)
        report = build_report(out)
        print(f"bench {args.model}: {report['items']} item(s) x {len(configs)} method(s) -> {html_path}")
        for row in report["summary"]:
            sp, ps = row["speedup_median"], row["psnr_mean"]
            print(f"  {row['method']:<28s} speed-up {sp if sp is None else f'{sp:.2f}x'}  PSNR "
                  f"{'-' if ps is None else f'{ps:.1f}'}  SSIM "
                  f"{'-' if row['ssim_mean'] is None else format(row['ssim_mean'], '.3f')}  method calls "
                  f"{'-' if row['coverage_mean'] is None else format(row['coverage_mean'], '.0%')}"
                  + ("" if row["density_mean"] is None else f"  density {row['density_mean']:.2f}"))
    return 0


def cmd_report(args) -> int:
    """``attnplug report DIR``: merge every record under DIR into DIR/report.json and DIR/report.html."""
    from .report import collect_records, write_report

    directory = Path(args.dir)
    if not directory.is_dir():
        raise UserError(f"report: {str(directory)!r} is not a folder.")
    if not collect_records(directory):
        raise UserError(f"report: no attnplug records (*.json sidecars) under {str(directory)!r}.")
    json_path, html_path = write_report(directory)
    print(f"{json_path}\n{html_path}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# methods, demo, ui


def cmd_methods(args) -> int:
    """``attnplug methods [NAME]``: the methods and their options (type, default, choices/range, help)."""
    from .config import Schedule, field_specs, method_configs

    configs = method_configs()
    names = [args.name] if args.name else list(configs)
    if args.name and args.name not in configs:
        raise UserError(f"unknown method {args.name!r}; choose one of {', '.join(configs)}.")
    for name in names:
        cls = configs[name]
        print(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        for spec in field_specs(cls):
            accepted = ""
            if spec.choices:
                accepted = f"; one of {', '.join(map(str, spec.choices))}"
            elif spec.min is not None or spec.max is not None:
                accepted = f"; in [{'-inf' if spec.min is None else spec.min}, " \
                           f"{'inf' if spec.max is None else spec.max}]"
            print(f"    -o {spec.name}=  ({spec.type}, default {spec.default!r}{accepted}) {spec.help}")
    if not args.name:
        print("schedule (any method):")
        for spec in field_specs(Schedule):
            print(f"    --{spec.name.replace('_', '-')}  (default {spec.default!r}) {spec.help}")
    return 0


def _demo_jobs(models: list[str]) -> list[tuple]:
    from .methods import AgentConfig, NeighborhoodConfig

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

    from .config import config_from_options
    from .loading import load
    from .models import available_models
    from .report import as_float_array, jsonable, judge, save_media, write_json

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
            from .pipelines import HiResConfig, hires

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


def find_ui_app() -> Path | None:
    """``demos/app.py`` of the source checkout this package lives in, if present."""
    app = Path(__file__).resolve().parent.parent / "demos" / "app.py"
    return app if app.is_file() else None


def cmd_ui(args, rest: list[str]) -> int:
    """``attnplug ui``: run the Gradio app ``demos/app.py`` (from a source checkout)."""
    import runpy

    app = find_ui_app()
    if app is None:
        raise UserError("the Gradio app demos/app.py is not part of this install; run `attnplug ui` from a source "
                        "checkout (pip install -e '.[demo]').")
    argv = ["--host", args.host, "--port", str(args.port)] + (["--share"] if args.share else []) + rest
    old = sys.argv
    sys.argv = [str(app), *argv]
    try:
        runpy.run_path(str(app), run_name="__main__")
    finally:
        sys.argv = old
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Parser


def _version_string() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("attnplug")
    except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
        return "unknown"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="log attnplug's decisions (-vv: debug)")
    p.add_argument("--model", default="shapes-unet",
                   help="embedded model (shapes-unet, shapes-dit, shapes-video), its folder, a diffusers folder "
                        "(save_pretrained), a Hub id, or tiny-sd/tiny-pixart/tiny-wan (random weights)")
    p.add_argument("prompt", nargs="*", help="prompts (or --prompt-file)")
    p.add_argument("--prompt-file", help="one prompt per line (.txt) or JSON objects per line (.jsonl) with "
                                         f"optional overrides: {', '.join(sorted(JSONL_KEYS - {'prompt'}))}")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--frames", type=int, help="video models: number of frames")
    p.add_argument("--steps", type=int, help="denoising steps")
    p.add_argument("--guidance", "--guidance-scale", type=float, dest="guidance", help="classifier-free guidance")
    p.add_argument("--negative-prompt")
    p.add_argument("--num-images", type=int, default=1, help="images/videos per prompt and seed")
    p.add_argument("--seeds", default="0", help="comma list or range, e.g. 0,1,2 or 0-7")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", help="float32, float16, bfloat16 (default: the model's)")
    p.add_argument("--threads", type=int, help="torch threads per process (default: cores / local processes)")
    sched = p.add_argument_group("schedule (where the method runs; default: the method's own)")
    sched.add_argument("--warmup-steps", type=int, dest="warmup_steps", help="first steps that stay dense")
    sched.add_argument("--until-step", dest="until_step", help="last step (exclusive): index, or fraction like 0.5")
    sched.add_argument("--skip-first-layers", type=int, dest="skip_first_layers")
    sched.add_argument("--skip-last-layers", type=int, dest="skip_last_layers")
    sched.add_argument("--layers", help="self-attention layer indices (0,1,5) or a regex on module names")
    ext = p.add_argument_group("multi-pass pipelines (attnplug.pipelines)")
    ext.add_argument("--hires", action="store_true", help="generate through attnplug.pipelines.hires")
    ext.add_argument("--hires-option", type=parse_option, action="append", default=[], metavar="FIELD=VALUE")
    ext.add_argument("--long-video", action="store_true", help="generate through attnplug.pipelines.long_video")
    ext.add_argument("--long-video-option", type=parse_option, action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--video-format", choices=("mp4", "gif"), default="mp4", help="mp4 = H.264 yuv420p")
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--overwrite", action="store_true", help="redo items whose record was made by another command")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The ``attnplug`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="attnplug", description=__doc__.splitlines()[0],
        epilog="example: attnplug generate 'red circle' --model shapes-unet --height 32 --width 32 "
               "--method agent -o agents=16 --seeds 0,1 --out outputs/agent",
    )
    parser.add_argument("--version", action="version", version=f"attnplug {_version_string()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log attnplug's decisions (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images/videos for prompts x seeds with one method",
                         epilog="example: attnplug generate 'red circle' 'blue square' --model shapes-unet "
                                "--method agent -o agents=16 --seeds 0,1 --out outputs/agent")
    _common(gen)
    gen.add_argument("--method", default="dense", help="attention method (see `attnplug methods`)")
    gen.add_argument("-o", "--option", type=parse_option, action="append", default=[], metavar="FIELD=VALUE",
                     help="method option (repeatable), e.g. --method agent -o agents=64")
    gen.add_argument("--out", default="outputs/generate", help="output folder (rerun to resume)")
    gen.set_defaults(func=cmd_generate)

    bench = sub.add_parser("bench", help="methods vs dense on the same prompts and seeds: speed and fidelity",
                           epilog="example: attnplug bench --model shapes-unet --methods dense,agent,neighborhood "
                                  "--prompt 'red circle' --seeds 0,1 --height 32 --width 32 --out outputs/bench")
    _common(bench)
    bench.add_argument("--prompt", dest="prompt_opt", action="append", default=[], help="a prompt (repeatable)")
    bench.add_argument("--methods", default="dense,agent,neighborhood",
                       help="comma list; options per entry: agent[agents=16;max_level=1]; 'stock' = no attnplug")
    bench.add_argument("--warmup", type=int, default=1, help="untimed runs per method before timing")
    bench.add_argument("--repeats", type=int, default=1, help="timed runs per method and item (median)")
    bench.add_argument("--suite", choices=("gpu",),
                       help="gpu: the prepared CUDA benchmark on real architectures (benchmarks/gpu_bench.py, run "
                            "from a source checkout's root; --out defaults to benchmarks/results/gpu)")
    bench.add_argument("--out", default="outputs/bench")
    bench.set_defaults(func=cmd_bench)

    report = sub.add_parser("report", help="merge the records under DIR into DIR/report.json and report.html")
    report.add_argument("dir")
    report.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS)
    report.set_defaults(func=cmd_report)

    methods = sub.add_parser("methods", help="list methods and their options")
    methods.add_argument("name", nargs="?")
    methods.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS)
    methods.set_defaults(func=cmd_methods)

    demo = sub.add_parser("demo", help="generate images and a video with the embedded models")
    demo.add_argument("--out", default="outputs/demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-methods", dest="methods", action="store_false", help="dense attention only")
    demo.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS)
    demo.set_defaults(func=cmd_demo)

    ui = sub.add_parser("ui", help="the Gradio app (demos/app.py)")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=7860)
    ui.add_argument("--share", action="store_true")
    ui.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS)
    ui.set_defaults(func=cmd_ui)
    return parser


class _Formatter(logging.Formatter):
    """``name: message``, without repeating an ``attnplug:`` the message already starts with."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace(f"{record.name}: attnplug: ", f"{record.name}: ", 1)


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING
    root = logging.getLogger("attnplug")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            from diffusers.utils import logging as dlogging

            dlogging.set_verbosity_error()
        except ImportError:  # pragma: no cover
            pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``attnplug`` command; returns the exit code (2 for a user error, 1 for a failure)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if argv[:1] == ["ui"]:
        args, rest = parser.parse_known_args(argv)
    else:
        args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0) or 0)
    if getattr(args, "prompt_opt", None):
        args.prompt = list(args.prompt) + args.prompt_opt
    try:
        if args.command == "ui":
            return cmd_ui(args, rest)
        if getattr(args, "suite", None) == "gpu":
            return _run_gpu_suite(args)
        return args.func(args)
    except UserError as exc:
        print(f"attnplug {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"attnplug {args.command}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    except (ValueError, TypeError) as exc:
        if getattr(args, "verbose", 0):
            raise
        print(f"attnplug {args.command}: error: {exc}", file=sys.stderr)
        return 2


GPU_BENCH_SCRIPT = Path("benchmarks") / "gpu_bench.py"
GPU_BENCH_OUT = Path("benchmarks") / "results" / "gpu"


def _run_gpu_suite(args) -> int:
    """``bench --suite gpu``: run the benchmark script of the source checkout in the working directory (the package
    never imports or ships it) with this interpreter, passing ``--out``."""
    import subprocess

    script = Path.cwd() / GPU_BENCH_SCRIPT
    if not script.is_file():
        raise UserError(f"--suite gpu runs {GPU_BENCH_SCRIPT} from a source checkout of attnplug; there is none "
                        f"under {Path.cwd()}: run it from the repository root.")
    out = args.out if args.out != "outputs/bench" else str(GPU_BENCH_OUT)
    return subprocess.call([sys.executable, str(script), "--out", out])


if __name__ == "__main__":
    sys.exit(main())
