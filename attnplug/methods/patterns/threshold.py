"""In-flight score-threshold skipping (BLASST) on top of any block pattern.

The kernel walks each query block's key blocks in LUT order and skips a block (its softmax and ``P V`` work) when,
for every query row, the block's row max is below the running row max minus ``threshold`` (natural-log units), so a
skipped block adds less than ``block * exp(-threshold)`` to a row's softmax mass relative to its max weight. Visiting
the likely-strongest blocks first raises the running max early: :func:`locality_priority` orders a row by distance
from the diagonal block (nearest first), a good proxy in local (tile-major / frame-major) orders; dynamic patterns
order by their pooled scores instead.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...layout import TokenLayout
from ..base import CallInfo
from .base import ConfiguredPattern, PatternOutput, Plan, effective_density, full_permutation, run_static
from .common import inverse_permutation, lut_from_block_mask
from .tiles import tile_major_order

__all__ = ["DEFAULT_THRESHOLD", "ThresholdPattern", "effective_density", "locality_priority"]

#: Threshold used by the ``threshold`` pattern when none is given (``exp(-8)`` ~ 3e-4 of the max weight per token).
DEFAULT_THRESHOLD = 8.0


def locality_priority(num_blocks: int, device=None) -> Tensor:
    """Float ``(M, M)`` priority ``-|i - j|`` (higher = visited earlier): the diagonal block first, then outwards."""
    i = torch.arange(num_blocks, device=device, dtype=torch.float32)
    return -(i[:, None] - i[None, :]).abs()


class ThresholdPattern(ConfiguredPattern):
    """``pattern="threshold"``: every block (tile-major order when the tile fits), nearest first, with the kernel's
    threshold skipping."""

    name = "threshold"
    video_only = False

    def plan(self, layout: TokenLayout, device) -> Plan:
        """All ``(M, M)`` blocks with a locality-ordered LUT on ``device``."""
        n = layout.num_tokens
        image_perm, tile = tile_major_order(layout.grid, self.config)
        block = self.config.block_size
        m = math.ceil(n / block)
        mask = torch.ones(m, m, dtype=torch.bool)
        lut = lut_from_block_mask(mask[None, None], block, locality_priority(m)[None, None])
        perm = full_permutation(image_perm, n) if image_perm is not None else None
        return Plan(
            layout=layout, block=block, perm=None if perm is None else perm.to(device),
            inv=None if perm is None else inverse_permutation(perm).to(device), lut=lut.to(device), mask=mask,
            density=1.0, details={"tile": tile},
        )

    def run(self, q: Tensor, k: Tensor, v: Tensor, plan: Plan, info: CallInfo, keep: Tensor | None = None
            ) -> PatternOutput:
        """One call on text-last ``q, k, v (B, H, N, D)`` with optional key padding ``keep (B, N)``."""
        return run_static(q, k, v, plan, info, self.config, keep)
