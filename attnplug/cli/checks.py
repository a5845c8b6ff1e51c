"""Checks done before a model loads: the model name, device and dtype, the output folder, and the call settings
against what the model can generate (sizes, frame counts, steps), naming the flag and the nearest valid values."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UserError
from .items import Item

DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?|mps")


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


def check_device(device: str) -> str:
    """``device`` if it names one this machine has; torch is imported only to check an accelerator."""
    if not DEVICE_PATTERN.fullmatch(str(device)):
        raise UserError(f"--device {device!r} is not accepted; use cpu, cuda, cuda:N or mps.")
    if device == "cpu":
        return device
    from ..loading import check_device as check_with_torch

    try:
        return check_with_torch(device)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None


def check_dtype(dtype: str | None) -> str | None:
    """The canonical name of ``--dtype`` (None keeps the model's); converted to a torch dtype when the model loads."""
    from ..loading import DTYPES

    if dtype is None:
        return None
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key in ("auto", "none", ""):
        return None
    if key not in DTYPES:
        raise UserError(f"dtype={dtype!r} is not accepted; choose one of auto, {', '.join(sorted(set(DTYPES)))}.")
    return DTYPES[key]


def check_model(args):
    """Resolve ``--model``, ``--device`` and ``--dtype`` without loading; returns (source, device, dtype name)."""
    from ..loading import resolve

    try:
        source = resolve(args.model)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None
    return source, check_device(args.device), check_dtype(args.dtype)


def _nearest(value: int, step: int, offset: int = 0) -> str:
    """The valid values ``k * step + offset`` next to ``value`` (positive multiples when ``offset`` is 0)."""
    below = (value - offset) // step * step + offset
    smallest = step if offset == 0 else offset
    return " or ".join(str(v) for v in (below, below + step) if v >= smallest)


def _where(item: Item) -> str:
    return "" if item.source == "argument" else f" ({item.source})"


def _check_sizes(name: str, rules, item: Item, steps: bool) -> None:
    call = item.call
    m = rules.size_multiple
    for key in ("height", "width"):
        value = call.get(key)
        if value is not None and value % m:
            raise UserError(f"--{key} {value} is not accepted by {name}: sizes must be multiples of {m}; nearest: "
                            f"{_nearest(value, m)}{_where(item)}.")
    frames = call.get("frames")
    if frames is not None and rules.frame_period and (frames - 1) % rules.frame_period:
        p = rules.frame_period
        raise UserError(f"--frames {frames} is not accepted by {name}: its temporal VAE takes {p}k + 1 frames; "
                        f"nearest: {_nearest(frames, p, 1)}{_where(item)}.")
    if frames is not None and rules.max_frames and frames > rules.max_frames:
        raise UserError(f"--frames {frames} is more than {name} can generate (at most {rules.max_frames})"
                        f"{_where(item)}.")
    if steps and call.get("steps") is not None and call["steps"] < rules.min_steps:
        raise UserError(f"--steps {call['steps']} is not accepted by {name}: its scheduler needs at least "
                        f"{rules.min_steps} steps{_where(item)}.")


def check_call_against_model(source, items: list[Item]) -> dict:
    """Reject settings the model cannot take (known without loading for embedded and tiny models), fill in the
    model's runnable defaults where the user gave none, and return the extra pipeline arguments it needs."""
    from ..models.catalog import model_rules

    rules = model_rules(source.name, source.kind, source.path)
    if rules is None:
        return {}
    for item in items:
        if item.call.get("frames") is not None and not rules.video:
            raise UserError(f"--frames is for video models; {source.name!r} makes images{_where(item)}.")
        if item.call.get("negative_prompt") and source.kind == "embedded":
            raise UserError(f"--negative-prompt is not supported by the embedded model {source.name!r}"
                            f"{_where(item)}.")
        for key, value in rules.defaults.items():
            if item.call.get(key) is None:
                item.call[key] = value
        _check_sizes(source.name, rules, item, steps=True)
    return dict(rules.call)
