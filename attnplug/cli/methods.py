"""``attnplug methods [NAME]``: the methods and their options (type, default, choices/range, help); no torch."""

from __future__ import annotations

from .errors import UserError
from .options import did_you_mean, method_configs


def _accepted(spec) -> str:
    if spec.choices:
        return f"; one of {', '.join(map(str, spec.choices))}"
    if spec.min is not None or spec.max is not None:
        return f"; in [{'-inf' if spec.min is None else spec.min}, {'inf' if spec.max is None else spec.max}]"
    return ""


def cmd_methods(args) -> int:
    """Print every method (or ``NAME``) with its options, then the schedule flags any method takes."""
    from ..config import Schedule, field_specs

    configs = method_configs()
    if args.name and args.name not in configs:
        raise UserError(f"unknown method {args.name!r}; choose one of {', '.join(configs)}."
                        + did_you_mean(args.name, configs))
    for name in [args.name] if args.name else list(configs):
        cls = configs[name]
        print(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        for spec in field_specs(cls):
            print(f"    -o {spec.name}=  ({spec.type}, default {spec.default!r}{_accepted(spec)}) {spec.help}")
    if not args.name:
        print("schedule (any method):")
        for spec in field_specs(Schedule):
            print(f"    --{spec.name.replace('_', '-')}  (default {spec.default!r}) {spec.help}")
    return 0
