"""Techniques that need more than one attention call: high-resolution images and long videos.

``attnplug.pipelines.hires(pipe, prompt, height=..., width=...)`` and ``attnplug.pipelines.long_video(pipe, prompt,
num_frames=...)`` with their configs. They use only attnplug's public API and module hooks on the stock diffusers
modules. Importing this package is cheap: each technique is imported when first used. The implementations live in
private subpackages whose names differ from the entry points, so ``attnplug.pipelines.hires`` is always the function.
"""

from __future__ import annotations

import importlib

# public name -> (private module, name there)
_LAZY = {
    "hires": ("_hires", "hires"),
    "HiResConfig": ("_hires", "HiResConfig"),
    "HiResPipeline": ("_hires", "HiResPipeline"),
    "HiResPlan": ("_hires", "HiResPlan"),
    "hires_plan": ("_hires", "plan"),
    "PipelineConfig": ("_config", "PipelineConfig"),
    "long_video": ("_long_video", "long_video"),
    "LongVideoConfig": ("_long_video", "LongVideoConfig"),
    "LongVideoPlan": ("_long_video", "LongVideoPlan"),
    "long_video_plan": ("_long_video", "resolve_config"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
