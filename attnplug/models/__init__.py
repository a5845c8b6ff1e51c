"""Embedded tiny text-to-image / text-to-video models, trained here on synthetic shapes and shipped as package data.

``load_pipeline(name)`` returns an ordinary diffusers pipeline, offline; ``available_models()`` lists the names;
``detect(image)`` is a small classical detector used to judge what the models generate. Importing this package is
cheap: diffusers and the weights are loaded only when a pipeline is requested, and nothing trains at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["available_models", "load_pipeline", "detect", "detect_video", "DetectedObject", "Detection",
           "VideoSummary", "summarize_video"]

_LAZY = {
    "available_models": "loader",
    "load_pipeline": "loader",
    "detect": "detector",
    "detect_video": "detector",
    "summarize_video": "detector",
    "DetectedObject": "detector",
    "Detection": "detector",
    "VideoSummary": "detector",
}

if TYPE_CHECKING:
    from .detector import DetectedObject, Detection, VideoSummary, detect, detect_video, summarize_video
    from .loader import available_models, load_pipeline


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
