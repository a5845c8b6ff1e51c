"""Attention methods: ``out = method(q, k, v, layout, mask, info)`` on ``(B, H, N, D)`` tensors.

Importing this package is cheap (PEP 562): the configs (:mod:`.configs`) need no torch; a method class, and torch
with it, is imported when it is first used.
"""

from __future__ import annotations

from .._lazy import lazy_attributes

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


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals(), __all__)
