"""Techniques that need more than one attention call: high-resolution images and long videos.

They use only attnplug's public API and module hooks on the stock diffusers modules; importing this package is cheap
(each technique is imported when first used).
"""

from __future__ import annotations

import importlib
import sys
import types

_LAZY = {
    "hires": "hires",
    "HiResConfig": "hires",
    "HiResPipeline": "hires",
    "long_video": "long_video",
    "LongVideoConfig": "long_video",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        # importing the submodule `hires` bound the package attribute `hires` to the module: the function wins
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


class _Package(types.ModuleType):
    """The entry points share their names with their modules (``hires`` in ``hires.py``). Importing a submodule
    binds it as the package attribute of that name; here the entry point function is bound instead, so
    ``attnplug.pipelines.hires(...)`` is the function whichever import ran first (the module stays in
    ``sys.modules``)."""

    def __setattr__(self, name, value):
        if name in _LAZY and isinstance(value, types.ModuleType) and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
