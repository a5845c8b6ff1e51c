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

from .._lazy import lazy_attributes

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


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals(), __all__)
