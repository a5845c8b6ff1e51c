"""``attnplug methods [NAME]``: the methods and their options (type, default, one accepted range, help), each
method's default schedule, and the hi-res / long-video options (``methods hires``, ``methods long_video``). Listing
the methods imports no torch; the hi-res and long-video configs do."""

from __future__ import annotations

import re

from .errors import UserError
from .options import EXTENSIONS, did_you_mean, method_configs


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, whole even where it spans lines."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    paragraph = re.sub(r":\w+:`~?([^`]*)`", r"\1", paragraph).replace("``", "")  # reStructuredText roles, literals
    match = re.search(r"(?<=[.!?])\s+(?=[A-Z(`])", paragraph)
    return paragraph[:match.start()] if match else paragraph


def _accepted(spec) -> str:
    if spec.choices:
        return f"; one of {', '.join(map(str, spec.choices))}"
    if spec.bounded:
        return f"; in {spec.range_text()}"
    return ""


def _fields(cls, flag: str) -> list[str]:
    from ..config import field_specs

    return [f"    {flag} {spec.name}=  ({spec.type}, default {spec.default!r}{_accepted(spec)}) {spec.help}"
            for spec in field_specs(cls)]


def _method(name: str, cls) -> list[str]:
    from ..report.labels import schedule_words

    try:
        schedule = cls().default_schedule()
    except (TypeError, ValueError):  # a config without usable defaults
        schedule = None
    lines = [f"{name}: {first_sentence(cls.__doc__)}", f"    default schedule: {schedule_words(schedule)}"]
    return lines + _fields(cls, "-o")


def _extension(name: str) -> list[str]:
    from .options import extension_config

    cls = type(extension_config(name, [], resolved=True))
    _, flag = EXTENSIONS[name]
    pipeline = "--hires" if name == "hires" else "--long-video"
    return [f"{name} ({pipeline}): {first_sentence(cls.__doc__)}"] + _fields(cls, flag)


def cmd_methods(args) -> int:
    """Print every method (or ``NAME``: a method, ``hires`` or ``long_video``) with its options."""
    from ..config import Schedule, field_specs

    configs = method_configs()
    if args.name in EXTENSIONS:
        print("\n".join(_extension(args.name)))
        return 0
    if args.name and args.name not in configs:
        names = [*configs, *EXTENSIONS]
        raise UserError(f"unknown method {args.name!r}; choose one of {', '.join(names)}."
                        + did_you_mean(args.name, names))
    blocks = ["\n".join(_method(name, configs[name])) for name in ([args.name] if args.name else configs)]
    if not args.name:
        blocks.append("\n".join(["schedule (any method; overrides its default schedule):"] + [
            f"    --{spec.name.replace('_', '-')}  (default {spec.default!r}) {spec.help}"
            for spec in field_specs(Schedule)]))
        blocks.append("hi-res and long-video options (--hires-option / --long-video-option): "
                      "attnplug methods hires, attnplug methods long_video")
    print("\n\n".join(blocks))
    return 0
