"""Techniques that need more than one attention call: high-resolution images and long videos.

They use only attnplug's public API and module hooks on the stock diffusers modules; importing this package is cheap
(each technique is imported when first used).
"""

from __future__ import annotations

import importlib

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
