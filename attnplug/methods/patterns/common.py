"""Block-mask helpers shared by the sparse video patterns.

Every pattern works on a sequence whose ``n_image`` image tokens come first (in some permuted order) and whose text
tokens come last (:meth:`attnplug.TokenLayout.to_text_last`). It describes which key blocks each query block visits
as a boolean block mask ``(..., M, M)`` with ``M = ceil(n_total / block)``; blocks holding any text token are
*global*: every query block visits them and they visit every key block.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "add_global_blocks",
    "block_ranges",
    "block_token_mask",
    "first_global_block",
    "inverse_permutation",
    "lut_from_block_mask",
]


def first_global_block(n_image: int, n_total: int, block: int) -> int:
    """Index of the first block that holds a text token (``ceil(n_total / block)`` when there is no text)."""
    if n_total == n_image:
        return math.ceil(n_total / block)
    return n_image // block


def add_global_blocks(mask: Tensor, n_image: int, n_total: int, block: int) -> Tensor:
    """Mark the blocks holding text tokens global: ``mask (..., M, M)`` -> a copy with their rows and columns True."""
    g = first_global_block(n_image, n_total, block)
    if g >= mask.shape[-1]:
        return mask
    mask = mask.clone()
    mask[..., g:, :] = True
    mask[..., :, g:] = True
    return mask


def block_ranges(coord: Tensor, block: int, num_blocks: int) -> tuple[Tensor, Tensor]:
    """Smallest and largest ``coord`` of the image tokens in each block.

    Args:
        coord: ``(n_image,)`` integer coordinate (e.g. frame index) of each image token, in sequence order.
        block: tokens per block.
        num_blocks: number of blocks of the whole sequence (text included).

    Returns:
        ``(lo, hi)``, each ``(num_blocks,)`` int64; blocks without image tokens get ``lo = +big``, ``hi = -big``.
    """
    n = coord.numel()
    big = 1 << 40
    pad = num_blocks * block - n
    c = coord.to(torch.int64)
    lo = torch.cat([c, c.new_full((pad,), big)]).view(num_blocks, block).amin(-1)
    hi = torch.cat([c, c.new_full((pad,), -big)]).view(num_blocks, block).amax(-1)
    return lo, hi


def inverse_permutation(perm: Tensor) -> Tensor:
    """``inv`` with ``inv[perm[i]] = i`` for a permutation ``perm`` (last dim)."""
    inv = torch.empty_like(perm)
    inv.scatter_(-1, perm, torch.arange(perm.shape[-1], device=perm.device).expand_as(perm).contiguous())
    return inv


def block_token_mask(block_mask: Tensor, position: Tensor, block: int, rows: Tensor | None = None) -> Tensor:
    """Token-level mask ``(..., N, N)`` in *original* token order from a block mask in permuted order.

    Args:
        block_mask: bool ``(..., M, M)`` over the permuted sequence.
        position: ``(N,)`` position of each original token in the permuted sequence.
        block: tokens per block.
        rows: optional ``(S,)`` original indices of the query rows wanted: the result is then ``(..., S, N)``.
    """
    b = position // block
    bq = b if rows is None else b[rows]
    return block_mask[..., bq[:, None], b[None, :]]


def lut_from_block_mask(mask: Tensor, block: int, priority: Tensor | None = None):
    """A :class:`attnplug.kernels.BlockLUT` from a bool block mask ``(B|1, H|1, M, M)``.

    Without ``priority`` key blocks are listed in ascending order; with a float ``priority`` of the mask's shape they
    are listed highest priority first (the order matters for threshold skipping: visiting the strongest blocks first
    raises the running row maximum early, so more later blocks can be skipped).
    """
    from ...kernels import BlockLUT

    if priority is None:
        return BlockLUT.from_block_mask(mask, block, block)
    counts = mask.sum(-1, dtype=torch.int32)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    key = torch.where(mask, priority.float(), torch.full_like(priority, -math.inf, dtype=torch.float32))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices[..., :width].to(torch.int32)
    valid = torch.arange(width, device=mask.device) < counts[..., None]
    order = torch.where(valid, order, torch.zeros_like(order)).contiguous()
    return BlockLUT(order, counts.contiguous(), block, block)
