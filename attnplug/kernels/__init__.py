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
"""

from .agent import agent_attention, agent_attention_reference
from .block_sparse import (
    BlockLUT,
    NeighborhoodMask,
    block_sparse_attention,
    block_sparse_reference,
)
from .merge import merge_attentions
from .neighborhood import (
    na1d,
    na2d,
    na3d,
    neighborhood_attention,
    neighborhood_attention_generic,
    neighborhood_reference,
)
from .window import WindowPlan, window_attention, window_attention_reference, window_mask_reference, window_plan

__all__ = [
    "BlockLUT",
    "WindowPlan",
    "agent_attention",
    "agent_attention_reference",
    "NeighborhoodMask",
    "block_sparse_attention",
    "block_sparse_reference",
    "merge_attentions",
    "na1d",
    "na2d",
    "na3d",
    "neighborhood_attention",
    "neighborhood_attention_generic",
    "neighborhood_reference",
    "window_attention",
    "window_attention_reference",
    "window_mask_reference",
    "window_plan",
]
