"""Parsing and validating what the user typed about methods: ``-o field=value``, ``--methods`` entries, schedule
flags, seeds and the hi-res / long-video options. Nothing here imports torch except the hi-res / long-video configs."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import re

from .errors import UserError

STOCK = "stock"  # bench pseudo-method: the pipeline without attnplug
SCHEDULE_FLAGS = ("warmup_steps", "until_step", "skip_first_layers", "skip_last_layers", "layers")
EXTENSIONS = {"hires": ("HiResConfig", "--hires-option"), "long_video": ("LongVideoConfig", "--long-video-option")}


def method_configs() -> dict:
    """Every method config class by name (the built-in ones are registered by importing their torch-free modules)."""
    from ..config import method_configs as registered
    from ..methods import configs  # noqa: F401 - registers the built-in configs

    return registered()


def did_you_mean(word: str, choices) -> str:
    """`` Did you mean 'x'?`` for the closest of ``choices`` (hyphens read as underscores), or ``""``."""
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close and word.replace("-", "_") in choices:
        close = [word.replace("-", "_")]
    return f" Did you mean {close[0]!r}?" if close else ""


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


def format_option(key: str, value) -> str:
    """The ``field=value`` text :func:`parse_option` reads back as ``(key, value)``."""
    if isinstance(value, tuple):
        return f"{key}={','.join(map(str, value))}" if len(value) > 1 else f"{key}=({value[0]!r},)"
    return f"{key}={value}"


def coerce_options(method: str, options: dict) -> dict:
    """Check ``options`` against method ``method``'s field metadata and adapt typed text (``none``) to the field.

    ``UserError`` for an unknown field (closest field suggested; "did you forget --method?" when the field belongs
    to another method).
    """
    from ..config import field_specs

    configs = method_configs()
    specs = {s.name: s for s in field_specs(configs[method])}
    out = {}
    for key, value in options.items():
        if key not in specs:
            owners = [m for m, cls in configs.items() if m != method and key in {f.name for f in
                                                                                dataclasses.fields(cls)}]
            hint = did_you_mean(key, specs)
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


def check_method(method: str) -> None:
    """``UserError`` naming the methods (and the closest one) unless ``method`` is one."""
    configs = method_configs()
    if method not in configs:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(configs)}."
                        + did_you_mean(method, configs))


def build_config(method: str, options: dict):
    """The validated method config for ``method`` and ``options``; ``UserError`` naming what is accepted."""
    from ..config import config_from_options

    check_method(method)
    options = coerce_options(method, options)
    try:
        return config_from_options(method, options)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None


def build_schedule(args):
    """A :class:`attnplug.Schedule` from the schedule flags, or None when none is given (the method's default)."""
    from ..config import Schedule

    values = {name: getattr(args, name) for name in SCHEDULE_FLAGS if getattr(args, name, None) is not None}
    if not values:
        return None
    if "until_step" in values:
        text = values["until_step"]
        try:
            values["until_step"] = float(text) if "." in text else int(text)
        except ValueError:
            raise UserError(f"--until-step {text!r} must be a step index (8) or a fraction (0.5).") from None
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


def check_extension(name: str):
    """``attnplug.pipelines.<name>`` (hires / long_video) or ``UserError`` if this install lacks it."""
    try:
        import attnplug.pipelines as pipelines

        return getattr(pipelines, name)
    except (ImportError, AttributeError) as exc:
        flag = "--hires" if name == "hires" else "--long-video"
        raise UserError(f"{flag} needs attnplug.pipelines.{name}, which this install does not provide "
                        f"({type(exc).__name__}: {exc}).") from None


def extension_config(name: str, options: list[tuple[str, object]], *, resolved: bool = False):
    """The ``HiResConfig`` / ``LongVideoConfig`` for ``--hires-option`` / ``--long-video-option`` values: None when
    none is given (the pipeline's defaults), unless ``resolved`` asks for the defaults filled in. ``UserError`` for
    an unknown field or a bad value."""
    if not options and not resolved:
        return None
    cls_name, flag = EXTENSIONS[name]
    try:
        import attnplug.pipelines as pipelines

        cls = getattr(pipelines, cls_name)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"{flag} needs attnplug.pipelines.{cls_name} ({type(exc).__name__}: {exc}).") from None
    fields = [f.name for f in dataclasses.fields(cls)]
    values = dict(options)
    for key in values:
        if key not in fields:
            raise UserError(f"{flag}: {cls_name} has no field {key!r}; its fields: {', '.join(fields)}."
                            + did_you_mean(key, fields))
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{flag}: {exc}") from None
