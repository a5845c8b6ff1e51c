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

from ...layout import TokenLayout
from ..base import CallInfo
from .base import (
    ConfiguredPattern,
    PatternOutput,
    Plan,
    effective_density,
    full_permutation,
    pair_density,
    run_block_sparse,
    take,
)
from .common import add_global_blocks, block_ranges, block_token_mask, inverse_permutation, lut_from_block_mask

__all__ = [
    "HeadsPattern",
    "band_block_mask",
    "band_width_for_density",
    "head_coords",
    "head_permutation",
    "profile_heads",
]

_KINDS = ("spatial", "temporal")


def head_permutation(grid: tuple[int, int, int], kind: str, device=None) -> Tensor:
    """``perm (N,)`` of the image tokens for ``kind``: identity (spatial) or frame-minor token-major (temporal)."""
    f, h, w = grid
    idx = torch.arange(f * h * w, device=device)
    if kind == "spatial":
        return idx
    if kind == "temporal":
        return idx.view(f, h * w).t().reshape(-1)
    raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")


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


class HeadsPattern(ConfiguredPattern):
    """``pattern="heads"`` (Sparse VideoGen): per head and call, the spatial or temporal band mask whose output on
    ``num_sampled_rows`` sampled query rows is closest to full attention."""

    name = "heads"
    video_only = True

    def plan(self, layout: TokenLayout, device) -> Plan:
        """One candidate :class:`Plan` per kind (order, band mask and LUT on ``device``), widths from the density."""
        cfg = self.config
        n, block = layout.num_tokens, cfg.block_size
        candidates = {}
        for kind in _KINDS:
            coord = head_coords(layout.grid, kind)
            width = band_width_for_density(coord, block, cfg.density)
            mask = band_block_mask(coord, width, block, n)
            perm = full_permutation(head_permutation(layout.grid, kind), n)
            candidates[kind] = Plan(
                layout=layout, block=block, perm=perm.to(device), inv=inverse_permutation(perm).to(device),
                lut=lut_from_block_mask(mask[None, None], block).to(device), mask=mask.to(device),
                density=pair_density(mask, n, block), details={"width": width},
            )
        widths = tuple(candidates[kind].details["width"] for kind in _KINDS)
        return Plan(layout=layout, block=block, details={"widths": widths}, candidates=candidates)

    def run(self, q: Tensor, k: Tensor, v: Tensor, plan: Plan, info: CallInfo) -> PatternOutput:
        """Profile the heads on sampled rows (deterministic per seed, layer and step), then one kernel call."""
        from ...kernels import BlockLUT

        cfg, scale = self.config, info.scale
        kinds = [plan.candidates[kind] for kind in _KINDS]
        block, n_img = plan.block, plan.layout.image_tokens
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + info.layer_index * 10_007 + max(info.step, 0))
        rows = torch.randperm(n_img, generator=gen)[: min(cfg.num_sampled_rows, n_img)].to(q.device)
        token_masks = [block_token_mask(kd.mask, kd.inv, block, rows) for kd in kinds]
        choice, _ = profile_heads(q, k, v, token_masks, rows, scale)
        heads = q.shape[1]
        temporal = int(choice.sum())
        if temporal in (0, heads):
            kd = kinds[1 if temporal else 0]
            out, stats = run_block_sparse(take(q, kd.perm), take(k, kd.perm), take(v, kd.perm), kd.lut, scale, cfg)
            out, density = take(out, kd.inv), kd.density
        else:
            perms = torch.stack([kinds[int(c)].perm for c in choice])  # (H, N)
            invs = torch.stack([kinds[int(c)].inv for c in choice])
            masks = torch.stack([kinds[int(c)].mask for c in choice])[None]  # (1, H, M, M)
            lut = BlockLUT.from_block_mask(masks, block, block)

            def gather(x, idx):
                return torch.gather(x, 2, idx[None, :, :, None].expand(x.shape[0], -1, -1, x.shape[-1]))

            out, stats = run_block_sparse(gather(q, perms), gather(k, perms), gather(v, perms), lut, scale, cfg)
            out = gather(out, invs)
            density = sum(kinds[int(c)].density for c in choice) / heads
        details = {"temporal_heads": temporal, "spatial_heads": heads - temporal}
        return PatternOutput(out, density, effective_density(density, stats), details)

