"""What a run writes beside each output: the record's recipe and key (what makes the item again), the command line
that reproduces it, collision-free output names, and resuming (finished items, half-written files)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
from pathlib import Path

from .errors import UserError
from .items import Item
from .options import SCHEDULE_FLAGS, STOCK, format_option

CALL_FLAGS = {"height": "--height", "width": "--width", "frames": "--frames", "steps": "--steps",
              "guidance": "--guidance", "negative_prompt": "--negative-prompt", "num_images": "--num-images"}


def _plain(value):
    """``value`` as JSON would read it back (tuples as lists, unknown objects as text)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _asdict(config) -> dict | None:
    return None if config is None else dataclasses.asdict(config)


def recipe(args, item: Item, config, schedule, extensions: dict) -> dict:
    """Everything that decides what ``item`` looks like: model (and an embedded model's weights digest), prompt,
    seed, call settings, method config, schedule, dtype, the resolved hi-res / long-video configs and the media
    format."""
    from ..models.catalog import weights_digest

    return _plain({
        "model": args.model, "weights": weights_digest(args.model), "prompt": item.prompt,
        "seed": item.seed, "call": item.call,
        "config": config.describe() if config is not None else STOCK,
        "schedule": _asdict(schedule), "dtype": args.dtype, "hires": args.hires, "long_video": args.long_video,
        "hires_config": _asdict(extensions.get("hires")), "long_video_config": _asdict(extensions.get("long_video")),
        "video_format": args.video_format, "fps": args.fps,
    })


def recipe_key(rec: dict) -> str:
    """A short hash of a :func:`recipe`: equal keys, equal items."""
    return hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The settings that differ between two recipes, as ``name: old -> new`` (nested configs by field)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def finished(sidecar: Path, key: str, rec: dict, out: Path, overwrite: bool) -> bool:
    """Whether ``sidecar`` records a finished item made by the same recipe; ``UserError`` naming the differing
    settings when another recipe made it (unless ``overwrite``)."""
    if not sidecar.is_file():
        return False
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if record.get("key") != key:
        if overwrite:
            return False
        diff = differences(record["recipe"], rec) if isinstance(record.get("recipe"), dict) else []
        what = "; ".join(diff) if diff else "model, method, options or call settings differ"
        raise UserError(f"{sidecar} was made by a different command (recorded -> now: {what}); use another --out "
                        "or pass --overwrite.")
    return all((sidecar.parent / rel).is_file() or (out / rel).is_file() for rel in record.get("outputs", []))


def clean_partials(out: Path, ids: list[str]) -> None:
    """Remove what an interrupted run of these items left half-written (temporary ``.NAME.part.EXT`` files)."""
    for item_id in ids:
        for path in [*out.glob(f".{item_id}*.part.*"), *(out / "media" / item_id).glob(".*.part.*")]:
            try:
                path.unlink()
            except OSError:
                pass


def entry_stem(label: str, config, schedule) -> str:
    """The file stem of a bench entry: a safe slug of its label and a short hash of its full config and schedule,
    so entries that differ only in a value (``agent[value_shortcut=0.1]`` / ``[...=0.9]``) never share a file.
    The slug keeps no dot, so a media suffix is never mistaken inside it."""
    slug = re.sub(r"[^A-Za-z0-9_]+", "-", label).strip("-")[:60] or "entry"
    full = {"config": config.describe() if config is not None else STOCK, "schedule": _asdict(schedule)}
    digest = hashlib.sha256(json.dumps(_plain(full), sort_keys=True).encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


def plan_stems(labels: list[str], configs: dict, schedule) -> dict[str, str]:
    """:func:`entry_stem` of every bench entry, checked when the run is planned: ``UserError`` if two share one."""
    stems: dict[str, str] = {}
    for label in labels:
        stem = entry_stem(label, configs[label], schedule)
        clash = [other for other, s in stems.items() if s == stem]
        if clash:
            raise UserError(f"--methods entries {clash[0]!r} and {label!r} are the same run (same name and config); "
                            "give each entry once.")
        stems[label] = stem
    return stems


def save_outputs(result, stem: Path, args) -> tuple[dict, list]:
    """Save every image/video of ``result`` as ``stem[_k].png|mp4|gif`` at the generated size, and for each video
    its display copies (enlarged preview, frame strip). Returns the record's ``outputs`` and ``previews`` (names
    relative to the record's folder, which is ``stem``'s) and the arrays."""
    from ..report import as_float_array, save_media, save_previews

    arr = as_float_array(result)
    fields: dict = {"outputs": [], "previews": {}}
    media = []
    for k, one in enumerate(arr):
        target = stem if len(arr) == 1 else stem.with_name(f"{stem.name}_{k}")
        path = save_media(one, target, video_format=args.video_format, fps=args.fps)
        fields["outputs"].append(path.name)
        if one.ndim == 4:
            fields["previews"][path.name] = {kind: p.name for kind, p in save_previews(one, target, args.fps).items()}
        media.append(one)
    return fields, media


def judge_all(source, media: list, prompt: str) -> list[dict] | None:
    """The embedded detector's verdict on each output (embedded models only)."""
    if source.kind != "embedded":
        return None
    from ..report import judge

    return [judge(m, prompt) for m in media]


def item_command(args, item: Item, method_label: str, options: dict) -> str:
    """A command line that regenerates ``item`` alone: every setting that changes the output, spelled out."""
    cmd = ["attnplug", "generate", item.prompt, "--model", args.model, "--seeds", str(item.seed)]
    if method_label != "dense":
        cmd += ["--method", method_label]
    for key, value in options.items():
        cmd += ["-o", format_option(key, value)]
    for key, flag in CALL_FLAGS.items():
        value = item.call.get(key)
        if value is not None and not (key == "num_images" and value == 1):
            cmd += [flag, str(value)]
    for name in SCHEDULE_FLAGS:
        if getattr(args, name, None) is not None:
            cmd += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    cmd += ["--device", args.device] + (["--dtype", args.dtype] if args.dtype else [])
    if args.hires:
        cmd.append("--hires")
        for key, value in args.hires_option:
            cmd += ["--hires-option", format_option(key, value)]
    if args.long_video:
        cmd.append("--long-video")
        for key, value in args.long_video_option:
            cmd += ["--long-video-option", format_option(key, value)]
    cmd += ["--video-format", args.video_format, "--fps", str(args.fps), "--out", str(args.out)]
    return shlex.join(cmd)


def base_record(args, item: Item, source, device, dtype, rank: int, rec: dict) -> dict:
    """The fields every record of ``item`` shares (generate and bench)."""
    from ..report import RECORD_MARK

    return {
        RECORD_MARK: 1, "id": item.id, "prompt": item.prompt, "seed": item.seed, "source": item.source,
        "model": args.model, "model_kind": source.kind, "random_weights": source.random_weights,
        "device": device, "dtype": dtype or "model default", "rank": rank,
        "settings": item.call, "hires": args.hires, "long_video": args.long_video,
        "hires_config": rec["hires_config"], "long_video_config": rec["long_video_config"], "recipe": rec,
    }
