"""Configuration dataclasses: one frozen dataclass per method (each lives beside its method and subclasses
:class:`MethodConfig`) and :class:`Schedule`, which says at which denoising steps and in which layers a method runs.

Field metadata carries help text (``field(metadata={"help": ...})``) so the CLI and the UI are generated from the
same fields.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .methods.base import AttentionMethod


def help_field(
    default: Any,
    help: str,  # noqa: A002 - mirrors argparse's name
    *,
    choices: Sequence[Any] | None = None,
    min: float | None = None,  # noqa: A002
    max: float | None = None,  # noqa: A002
    min_open: bool = False,
    max_open: bool = False,
    **kwargs,
) -> Any:
    """A dataclass field whose metadata (``help``, ``choices``, ``min``, ``max``, and ``min_open``/``max_open`` for
    an open end) drives validation (:func:`validate_fields`), the CLI options and the UI form: the accepted range is
    stated here only, never in the help text."""
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "min": min, "max": max,
                "min_open": min_open, "max_open": max_open}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


@dataclass(frozen=True)
class FieldSpec:
    """One config field as the CLI and the UI see it."""

    name: str
    type: str  # the annotation as written, e.g. "int | tuple[int, int]"
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False

    @property
    def bounded(self) -> bool:
        """Whether a range is set at either end."""
        return self.min is not None or self.max is not None

    def accepts(self, value: float) -> bool:
        """Whether the number ``value`` lies in the field's range."""
        if self.min is not None and (value <= self.min if self.min_open else value < self.min):
            return False
        return self.max is None or (value < self.max if self.max_open else value <= self.max)

    def range_text(self) -> str:
        """The range in interval notation, e.g. ``(0, 1]`` or ``[1, inf)``."""
        lo = "(-inf" if self.min is None else f"{'(' if self.min_open else '['}{self.min}"
        hi = "inf)" if self.max is None else f"{self.max}{')' if self.max_open else ']'}"
        return f"{lo}, {hi}"


def field_specs(cls_or_config) -> list[FieldSpec]:
    """The :class:`FieldSpec` of every field of a config class (or instance), in declaration order."""
    specs = []
    for f in dataclasses.fields(cls_or_config):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        meta = f.metadata
        specs.append(
            FieldSpec(
                name=f.name,
                type=f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type)),
                default=default,
                help=meta.get("help", ""),
                choices=meta.get("choices"),
                min=meta.get("min"),
                max=meta.get("max"),
                min_open=bool(meta.get("min_open", False)),
                max_open=bool(meta.get("max_open", False)),
            )
        )
    return specs


def validate_fields(config) -> None:
    """Check every field of ``config`` against its metadata: ``choices`` (membership) and ``min``/``max`` (for
    numbers, and for each entry of a tuple of numbers). ``ValueError`` naming the field, its value and what is
    accepted."""
    owner = type(config).__name__
    for spec in field_specs(type(config)):
        value = getattr(config, spec.name)
        if spec.choices is not None and value not in spec.choices:
            raise ValueError(
                f"{owner}.{spec.name} must be one of {', '.join(repr(c) for c in spec.choices)}, got {value!r}."
            )
        if not spec.bounded:
            continue
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if item is None or isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if not spec.accepts(item):
                raise ValueError(f"{owner}.{spec.name} must be in {spec.range_text()}, got {value!r}.")


_REGISTRY: dict[str, type[MethodConfig]] = {}


@dataclass(frozen=True)
class MethodConfig:
    """Base class of method configs. Subclasses set ``name`` and implement :meth:`build`."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            _REGISTRY.setdefault(cls.name, cls)

    def __post_init__(self):
        validate_fields(self)

    def build(self) -> AttentionMethod:
        """Create the attention method this config describes."""
        raise NotImplementedError(f"{type(self).__name__} does not implement build().")

    def default_schedule(self) -> Schedule | None:
        """The schedule used when the caller gives none (e.g. AgentSD: the first 40 % of steps); None = everywhere."""
        return None

    def describe(self) -> dict[str, Any]:
        """The config as a plain dict (for reports), with the method name."""
        return {"method": self.name, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class Schedule:
    """Where a method runs. Outside the selection, attention is dense (stock).

    Layers are the self-attention modules of the denoiser in registration order, indexed from 0.
    """

    warmup_steps: int | float = help_field(
        0, "First denoising steps that stay dense (warm-up): a number of steps, or a float fraction of the steps in "
        "[0, 1)."
    )
    until_step: int | float | None = help_field(
        None, "Last step (exclusive) using the method: an int step index, or a float fraction of the steps in (0, 1]."
    )
    skip_first_layers: int = help_field(0, "Number of first self-attention layers that stay dense.")
    skip_last_layers: int = help_field(0, "Number of last self-attention layers that stay dense.")
    layers: tuple[int, ...] | str | None = help_field(
        None, "Only these self-attention layers: indices, or a regular expression on module names."
    )

    def __post_init__(self):
        w = self.warmup_steps
        if isinstance(w, float) and not isinstance(w, bool):
            if not 0.0 <= w < 1.0:
                raise ValueError(f"Schedule.warmup_steps as a fraction must be in [0, 1), got {w!r}.")
        for name in (("warmup_steps",) if not isinstance(w, float) else ()) + ("skip_first_layers",
                                                                               "skip_last_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"Schedule.{name} must be an int >= 0, got {value!r}.")
        u = self.until_step
        if isinstance(u, bool) or (u is not None and not isinstance(u, (int, float))):
            raise ValueError(f"Schedule.until_step must be an int, a float in (0, 1] or None, got {u!r}.")
        if isinstance(u, float) and not 0.0 < u <= 1.0:
            raise ValueError(f"Schedule.until_step as a fraction must be in (0, 1], got {u!r}.")
        if isinstance(u, int) and u < 0:
            raise ValueError(f"Schedule.until_step as a step index must be >= 0, got {u!r}.")
        if isinstance(self.layers, str):
            try:
                re.compile(self.layers)
            except re.error as e:
                raise ValueError(f"Schedule.layers {self.layers!r} is not a valid regular expression: {e}.") from None
        elif self.layers is not None:
            if not isinstance(self.layers, Sequence) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in self.layers
            ):
                raise ValueError(
                    f"Schedule.layers must be a sequence of ints, a regex string or None, got {self.layers!r}."
                )
            object.__setattr__(self, "layers", tuple(self.layers))

    def select_layers(self, names: Sequence[str]) -> list[bool]:
        """For self-attention modules ``names`` (in order), whether each uses the method."""
        n = len(names)
        if isinstance(self.layers, tuple):
            bad = [i for i in self.layers if not -n <= i < n]
            if bad:
                raise ValueError(
                    f"Schedule.layers has indices {bad} out of range: the model has {n} self-attention layers, "
                    f"valid indices are 0..{n - 1} (or negative from the end)."
                )
            chosen = {i % n for i in self.layers}
            selected = [i in chosen for i in range(n)]
        elif isinstance(self.layers, str):
            pattern = re.compile(self.layers)
            selected = [bool(pattern.search(name)) for name in names]
            if not any(selected):
                raise ValueError(
                    f"Schedule.layers {self.layers!r} matches none of the {n} self-attention modules "
                    f"(e.g. {', '.join(names[:3])})."
                )
        else:
            selected = [True] * n
        if self.skip_first_layers + self.skip_last_layers > n:
            raise ValueError(
                f"Schedule skips {self.skip_first_layers} first + {self.skip_last_layers} last layers but the model "
                f"has only {n} self-attention layers."
            )
        for i in range(n):
            if i < self.skip_first_layers or i >= n - self.skip_last_layers:
                selected[i] = False
        return selected

    def step_active(self, step: int, num_steps: int | None) -> bool:
        """Whether denoising step ``step`` (0-based; -1 = unknown) uses the method."""
        if step < 0:
            return self.warmup_steps == 0 and self.until_step is None
        warmup = self.warmup_steps
        if isinstance(warmup, float):
            if num_steps is None:
                raise ValueError(
                    "Schedule.warmup_steps is a fraction but the number of denoising steps is unknown: apply attnplug "
                    "to the pipeline (not only its model), or give warmup_steps as a number of steps."
                )
            warmup = round(warmup * num_steps)
        if num_steps is not None:
            if warmup > num_steps:
                raise ValueError(
                    f"Schedule.warmup_steps={self.warmup_steps} exceeds the {num_steps} denoising steps of this run "
                    f"(valid: 0..{num_steps})."
                )
            if isinstance(self.until_step, int) and self.until_step > num_steps:
                raise ValueError(
                    f"Schedule.until_step={self.until_step} exceeds the {num_steps} denoising steps of this run "
                    f"(valid: 0..{num_steps})."
                )
        if step < warmup:
            return False
        u = self.until_step
        if u is None:
            return True
        if isinstance(u, float):
            if num_steps is None:
                raise ValueError(
                    "Schedule.until_step is a fraction but the number of denoising steps is unknown: apply attnplug "
                    "to the pipeline (not only its model), or give until_step as a step index."
                )
            return step < round(u * num_steps)
        return step < u


def method_configs() -> dict[str, type[MethodConfig]]:
    """All registered method config classes by ``name``: every :class:`MethodConfig` subclass that sets ``name``
    registers itself when its class is defined (the built-in ones when ``attnplug`` is imported)."""
    return dict(sorted(_REGISTRY.items()))


def config_from_options(name: str, options: dict[str, Any] | None = None) -> MethodConfig:
    """Build the config of method ``name`` from ``options`` (field -> value); clear errors for unknown names/fields."""
    configs = method_configs()
    if name not in configs:
        raise ValueError(f"Unknown method {name!r}; choose one of {', '.join(configs)}.")
    cls = configs[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options or {}) - fields)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; valid fields: {', '.join(sorted(fields))}.")
    return cls(**(options or {}))
