"""Attention kernels used by attnplug's methods (tensors are ``(B, H, N, D)``).

``block_sparse_attention`` dispatches to a Triton kernel on CUDA and to a torch path that really skips work on
CPU/MPS; ``block_sparse_reference`` is the dense fp32 ground truth.
"""

from .block_sparse import (
    BlockLUT,
    NeighborhoodMask,
    block_sparse_attention,
    block_sparse_reference,
)

__all__ = ["BlockLUT", "NeighborhoodMask", "block_sparse_attention", "block_sparse_reference"]
