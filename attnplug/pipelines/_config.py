"""The base of the pipelines' recipes (:class:`~attnplug.pipelines.HiResConfig`,
:class:`~attnplug.pipelines.LongVideoConfig`): frozen dataclasses whose fields carry their help and accepted range
(:func:`attnplug.config.help_field`), validated on construction, with ``replace``, ``describe`` and
``field_specs``.

One convention for "the family default": a choice field spells it ``"auto"``; every other field (numbers, tuples,
booleans) spells it ``None``."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import FieldSpec, field_specs, validate_fields

__all__ = ["PipelineConfig"]


class PipelineConfig:
    """Mixin for a frozen dataclass recipe. Subclasses extend :meth:`__post_init__` with ``super().__post_init__()``
    (range and choice checks from the field metadata come first)."""

    def __post_init__(self) -> None:
        validate_fields(self)

    def replace(self, **changes) -> PipelineConfig:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """The recipe as a plain dict (for reports): every field, nested configs as dicts."""
        return dataclasses.asdict(self)

    @classmethod
    def field_specs(cls) -> list[FieldSpec]:
        """Name, default, help and accepted range of each field (what ``attnplug methods`` and the UI show)."""
        return field_specs(cls)
