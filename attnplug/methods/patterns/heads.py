"""Spatial and temporal heads (Sparse VideoGen): per head, the mask that best reproduces full attention.

Two candidate masks over the image tokens of a ``frames x height x width`` grid, each block-dense in its own order:

- **spatial**: frame-major order (the natural row-major order). A query block visits the key blocks whose frames lie
  within ``width`` frames of its own frames: with ``[lo_i, hi_i]`` the frame range of block ``i``, key block ``j`` is
  visited iff ``lo_j <= hi_i + width`` and ``hi_j >= lo_i - width``.
- **temporal**: token-major order (spatial position ``y * W + x`` major, frame minor), so the tokens of one spatial
  position in all frames are contiguous. The same band rule on the spatial-position coordinate: key block ``j`` is
  visited iff its position range lies within ``width`` positions of block ``i``'s.

Text blocks are global (see :mod:`.common`). The choice per head is made online by sampling a few query rows and
comparing each candidate's output with full attention on those rows (:func:`profile_heads`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import add_global_blocks, block_ranges

__all__ = [
    "HEAD_PATTERNS",
    "band_block_mask",
    "band_width_for_density",
    "head_coords",
    "head_permutation",
    "profile_heads",
]

HEAD_PATTERNS = ("spatial", "temporal")


def head_permutation(grid: tuple[int, int, int], kind: str, device=None) -> Tensor:
    """``perm (N,)`` of the image tokens for ``kind``: identity (spatial) or frame-minor token-major (temporal)."""
    f, h, w = grid
    idx = torch.arange(f * h * w, device=device)
    if kind == "spatial":
        return idx
    if kind == "temporal":
        return idx.view(f, h * w).t().reshape(-1)
    raise ValueError(f"kind must be one of {HEAD_PATTERNS}, got {kind!r}.")


def head_coords(grid: tuple[int, int, int], kind: str, device=None) -> Tensor:
    """Band coordinate of each image token *in the permuted order* of ``kind``: frame (spatial) or spatial position
    (temporal); non-decreasing along the sequence."""
    f, h, w = grid
    n = f * h * w
    pos = torch.arange(n, device=device)
    return pos // (h * w) if kind == "spatial" else pos // f


def band_block_mask(coord: Tensor, width: int, block: int, n_total: int) -> Tensor:
    """Bool ``(M, M)`` band mask (``M = ceil(n_total / block)``) over a sequence whose first ``coord.numel()`` tokens
    are image tokens with band coordinates ``coord``; text blocks are global."""
    m = math.ceil(n_total / block)
    lo, hi = block_ranges(coord, block, m)
    mask = (lo[None, :] <= hi[:, None] + width) & (hi[None, :] >= lo[:, None] - width)
    return add_global_blocks(mask, coord.numel(), n_total, block)


def band_width_for_density(coord: Tensor, block: int, density: float) -> int:
    """Largest band ``width`` whose image block-mask density is ``<= density`` (0 if even width 0 exceeds it).

    The density grows with the width, so the width is found by bisection (``O(log max(coord))`` masks).
    """
    n = coord.numel()
    m = math.ceil(n / block)
    sizes = torch.full((m,), float(block))
    sizes[-1] = n - (m - 1) * block
    pair = sizes[:, None] * sizes[None, :]

    def dens(width: int) -> float:
        return float((band_block_mask(coord, width, block, n).float() * pair).sum()) / (n * n)

    lo, hi = 0, int(coord.max())
    while lo < hi:  # largest width in [lo, hi] within the budget (0 when none is)
        mid = (lo + hi + 1) // 2
        if dens(mid) <= density + 1e-9:
            lo = mid
        else:
            hi = mid - 1
    return lo


def profile_heads(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    token_masks: list[Tensor],
    rows: Tensor,
    scale: float,
) -> tuple[Tensor, Tensor]:
    """Pick, per head, the candidate mask whose output on sampled query rows is closest to full attention.

    Args:
        q, k, v: ``(B, H, N, D)`` in original (text-last) token order.
        token_masks: one bool ``(S, N)`` mask per candidate: which keys each sampled row may see.
        rows: ``(S,)`` indices of the sampled query rows.
        scale: softmax scale.

    Returns:
        ``(choice (H,) int64 index into token_masks, errors (C, H) mean squared error per candidate and head)``.
    """
    errors = torch.zeros(len(token_masks), q.shape[1], dtype=torch.float32, device=q.device)
    for h in range(q.shape[1]):  # one head at a time: the (B, S, N) scores of all heads may not fit
        scores = torch.matmul(q[:, h, rows].float(), k[:, h].float().transpose(-1, -2)) * scale  # (B, S, N)
        vf = v[:, h].float()
        full = torch.matmul(torch.softmax(scores, -1), vf)
        for c, tm in enumerate(token_masks):
            s = scores.masked_fill(~tm, -math.inf)
            out = torch.matmul(torch.softmax(s, -1).nan_to_num(0.0), vf)
            errors[c, h] = (out - full).pow(2).mean()
    return errors.argmin(0), errors
