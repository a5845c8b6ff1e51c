"""Attention kernels used by attnplug's methods, each beside its plain reference.

- :mod:`.block_sparse`: ``block_sparse_attention`` (Triton on CUDA, a torch path that really skips work on CPU/MPS)
  and ``block_sparse_reference`` (dense fp32 ground truth); tensors ``(B, H, N, D)``.
- :mod:`.neighborhood`: neighbourhood attention in NATTEN's argument order: ``na1d`` / ``na2d`` / ``na3d`` and
  ``neighborhood_attention_generic`` on NATTEN-shaped ``(B, *spatial, H, D)`` tensors, ``neighborhood_attention`` on
  ``(B, H, N, D)`` with a ``TokenLayout``; ``neighborhood_reference`` is the fp32 ground truth.
- :mod:`.agent`: agent attention with text tokens kept global (``agent_attention``) beside
  ``agent_attention_reference``.
- :mod:`.window`: shifted-window attention (``window_attention``, its ``window_plan``) beside
  ``window_attention_reference``.
- :mod:`.merge`: ``merge_attentions``, the exact log-sum-exp merge of partial attentions.


Importing this package is cheap (PEP 562): each kernel module is imported, with torch, when a name is first used.
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it
_LAZY = {
    "agent_attention": "agent", "agent_attention_reference": "agent",
    "BlockLUT": "block_sparse", "NeighborhoodMask": "block_sparse", "block_sparse_attention": "block_sparse",
    "block_sparse_reference": "block_sparse",
    "merge_attentions": "merge",
    "na1d": "neighborhood", "na2d": "neighborhood", "na3d": "neighborhood",
    "neighborhood_attention": "neighborhood", "neighborhood_attention_generic": "neighborhood",
    "neighborhood_reference": "neighborhood",
    "WindowPlan": "window", "window_attention": "window", "window_attention_reference": "window",
    "window_mask_reference": "window", "window_plan": "window",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    try:  # a submodule used as an attribute (attnplug.kernels.block_sparse)
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":  # the submodule exists but needs something missing
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
