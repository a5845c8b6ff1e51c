"""In-flight score-threshold skipping (BLASST) on top of any block pattern.

The kernel walks each query block's key blocks in LUT order and skips a block (its softmax and ``P V`` work) when,
for every query row, the block's row max is below the running row max minus ``threshold`` (natural-log units), so a
skipped block adds less than ``block * exp(-threshold)`` to a row's softmax mass relative to its max weight. Visiting
the likely-strongest blocks first raises the running max early: :func:`locality_priority` orders a row by distance
from the diagonal block (nearest first), a good proxy in local (tile-major / frame-major) orders; dynamic patterns
order by their pooled scores instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["DEFAULT_THRESHOLD", "effective_density", "locality_priority"]

#: Threshold used by the ``threshold`` pattern when none is given (``exp(-8)`` ~ 3e-4 of the max weight per token).
DEFAULT_THRESHOLD = 8.0


def locality_priority(num_blocks: int, device=None) -> Tensor:
    """Float ``(M, M)`` priority ``-|i - j|`` (higher = visited earlier): the diagonal block first, then outwards."""
    i = torch.arange(num_blocks, device=device, dtype=torch.float32)
    return -(i[:, None] - i[None, :]).abs()


def effective_density(lut_density: float, stats: dict | None) -> float:
    """Density after threshold skipping: ``lut_density * (1 - skipped / visited)`` (blocks of equal size)."""
    if not stats or not stats.get("visited_blocks"):
        return lut_density
    return lut_density * (1.0 - stats.get("skipped_blocks", 0) / stats["visited_blocks"])
