"""Lazy package attributes (PEP 562): public names load their submodule, and torch with it, on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, names: dict[str, str | tuple[str, str]], namespace: dict,
                    public: list[str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``.

    Args:
        package: the package's ``__name__``.
        names: public name -> submodule that defines it (same name there), or ``(submodule, name there)``.
        namespace: the package's ``globals()``; a loaded name is stored there, so the next access is a plain lookup.
        public: the package's ``__all__`` (listed by ``dir``).

    Any other attribute is tried as a submodule (``attnplug.kernels.block_sparse``); a missing one is an
    ``AttributeError``, a submodule that exists but fails to import raises its own error.
    """

    def __getattr__(name: str):
        if name in names:
            target = names[name]
            module, attr = target if isinstance(target, tuple) else (target, name)
            value = getattr(importlib.import_module(f".{module}", package), attr)
            namespace[name] = value
            return value
        try:
            return importlib.import_module(f".{name}", package)
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.{name}":  # the submodule exists but needs something missing
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
