"""The dense method's config, importable without torch (the CLI lists and validates it before anything loads)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..config import MethodConfig, help_field

if TYPE_CHECKING:
    from .dense import DenseMethod

DENSE_BACKENDS = ("sdpa", "xformers")


@dataclass(frozen=True)
class DenseConfig(MethodConfig):
    """Exact dense attention through attnplug's interception (the reference for every other method)."""

    name: ClassVar[str] = "dense"
    backend: str = help_field(
        "sdpa", "Dense kernel: 'sdpa' (PyTorch) or 'xformers' (needs xformers and a GPU).", choices=DENSE_BACKENDS
    )

    def __post_init__(self):
        super().__post_init__()
        if self.backend == "xformers" and importlib.util.find_spec("xformers") is None:
            raise ValueError(
                "DenseConfig.backend='xformers' needs the xformers package: pip install 'attnplug[xformers]'."
            )

    def build(self) -> DenseMethod:
        from .dense import DenseMethod

        return DenseMethod(self)
