"""Attention kernels used by attnplug's methods, each beside its plain reference.

- :mod:`.block_sparse`: ``block_sparse_attention`` (Triton on CUDA, a torch path that really skips work on CPU/MPS)
  and ``block_sparse_reference`` (dense fp32 ground truth); tensors ``(B, H, N, D)``.
- :mod:`.neighborhood`: neighbourhood attention in NATTEN's argument order: ``na1d`` / ``na2d`` / ``na3d`` and
  ``neighborhood_attention_generic`` on NATTEN-shaped ``(B, *spatial, H, D)`` tensors, ``neighborhood_attention`` on
  ``(B, H, N, D)`` with a ``TokenLayout``; ``neighborhood_reference`` is the fp32 ground truth.
"""

from .block_sparse import (
    BlockLUT,
    NeighborhoodMask,
    block_sparse_attention,
    block_sparse_reference,
)
from .neighborhood import (
    na1d,
    na2d,
    na3d,
    neighborhood_attention,
    neighborhood_attention_generic,
    neighborhood_reference,
)

__all__ = [
    "BlockLUT",
    "NeighborhoodMask",
    "block_sparse_attention",
    "block_sparse_reference",
    "na1d",
    "na2d",
    "na3d",
    "neighborhood_attention",
    "neighborhood_attention_generic",
    "neighborhood_reference",
]
