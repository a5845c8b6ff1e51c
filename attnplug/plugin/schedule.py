"""The :class:`~attnplug.Schedule` of an :func:`~attnplug.apply` call, from its ``schedule=`` or its ``layers=`` /
``steps=`` shortcuts, else the method's default."""

from __future__ import annotations

from ..config import MethodConfig, Schedule
from ..methods.base import AttentionMethod


def resolve_schedule(config, schedule: Schedule | None, layers, steps) -> Schedule:
    if schedule is not None and (layers is not None or steps is not None):
        raise ValueError("Give either schedule=Schedule(...) or the layers=/steps= shortcuts, not both.")
    if schedule is not None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be an attnplug.Schedule, got {type(schedule).__name__}.")
        return schedule
    if layers is None and steps is None:
        if isinstance(config, AttentionMethod):  # a method instance: its config's default, if it has one
            config = getattr(config, "config", None)
        default = config.default_schedule() if isinstance(config, MethodConfig) else None
        return default if default is not None else Schedule()
    kwargs = {}
    if layers is not None:
        kwargs["layers"] = layers if isinstance(layers, str) else tuple(layers)
    if steps is not None:
        if isinstance(steps, range) and steps.step == 1:
            start, stop = steps.start, steps.stop
        elif isinstance(steps, (tuple, list)) and len(steps) == 2:
            start, stop = steps
        else:
            raise ValueError(f"steps must be range(start, stop) or (start, stop), got {steps!r}.")
        if stop is not None and not isinstance(stop, float) and stop <= start:
            raise ValueError(f"steps=({start}, {stop}) selects no step: stop must be greater than start.")
        kwargs.update(warmup_steps=int(start), until_step=stop)
    return Schedule(**kwargs)
