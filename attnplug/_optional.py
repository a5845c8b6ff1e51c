"""Optional packages (triton, natten): imported once per process, with the reason when they do not import."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["optional_import"]

#: name -> the module, or the reason it does not import. A plain dict, not ``lru_cache``: dynamo traces through it.
_TRIED: dict[str, ModuleType | str] = {}


def optional_import(name: str) -> ModuleType | str:
    """The module ``name``, or a one-line reason (``"ImportError: ..."``) when it does not import."""
    found = _TRIED.get(name)
    if found is None:
        try:
            found = importlib.import_module(name)
        except Exception as exc:  # any failure of an optional package (missing, broken build, no driver)
            found = f"{type(exc).__name__}: {exc}"
        _TRIED[name] = found
    return found
