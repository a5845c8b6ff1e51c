"""Attention methods: ``out = method(q, k, v, layout, mask, info)`` on ``(B, H, N, D)`` tensors.

Importing this package is cheap (PEP 562): the configs (:mod:`.configs`) need no torch; a method class, and torch
with it, is imported when it is first used.
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it
_LAZY = {
    "AgentConfig": "agent_config", "AgentMethod": "agent",
    "AttentionMethod": "base", "CallInfo": "base",
    "DenseConfig": "dense_config", "DenseMethod": "dense", "dense_attention": "dense",
    "FreeSwimConfig": "freeswim_config", "FreeSwimMethod": "freeswim",
    "NeighborhoodConfig": "neighborhood_config", "NeighborhoodMethod": "neighborhood",
    "SparseVideoConfig": "sparse_video_config", "SparseVideoMethod": "sparse_video",
    "WindowConfig": "window_config", "WindowMethod": "window",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    try:  # a submodule used as an attribute (attnplug.methods.patterns)
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":  # the submodule exists but needs something missing
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
