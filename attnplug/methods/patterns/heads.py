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
    ``num_sampled_rows`` sampled query rows is closest to full attention.

    Both candidates are planned once; a call selects per head between them on the device (orders, tables and
    densities stacked as ``(2, ...)`` tensors and indexed by the chosen kind), so it never reads the choice back."""

    name = "heads"
    video_only = True

    def plan(self, layout: TokenLayout, device) -> Plan:
        """One candidate :class:`Plan` per kind (order, band mask and LUT on ``device``), widths from the density,
        and the stacked tables the calls index (``Plan.tables``)."""
        from ...kernels import BlockLUT

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
        plans = [candidates[kind] for kind in _KINDS]
        wide = max(p.lut.max_k_blocks for p in plans)
        indices = torch.cat([torch.nn.functional.pad(p.lut.indices, (0, wide - p.lut.max_k_blocks)) for p in plans], 1)
        stacked = {
            "perm": torch.stack([p.perm for p in plans]), "inv": torch.stack([p.inv for p in plans]),
            "lut": BlockLUT(indices, torch.cat([p.lut.counts for p in plans], 1), block, block, trusted=True,
                            key_blocks=plans[0].lut.key_blocks),
            "density": torch.tensor([p.density for p in plans], device=device),
            "rows": torch.randperm(layout.image_tokens, generator=torch.Generator().manual_seed(cfg.seed)).to(device),
        }
        widths = tuple(candidates[kind].details["width"] for kind in _KINDS)
        return Plan(layout=layout, block=block, details={"widths": widths}, candidates=candidates, tables=stacked)

    def sampled_rows(self, plan: Plan, info: CallInfo) -> Tensor:
        """``(S,)`` query rows profiled in this call: a window of the plan's seeded row permutation that moves with
        the layer and the step (deterministic given ``seed``; no generator per call)."""
        rows = plan.tables["rows"]
        n_img = rows.numel()
        count = min(self.config.num_sampled_rows, n_img)
        offsets = torch.arange(count, device=rows.device) + info.layer_index * 7919
        if info.step_tensor is not None:  # the tracker's step as a tensor: a compiled graph does not guard on it
            start = info.step_tensor.to(rows.device).clamp(min=0) * count
        else:
            start = max(info.step, 0) * count
        return rows[(offsets + start) % n_img]

    def run(self, q: Tensor, k: Tensor, v: Tensor, plan: Plan, info: CallInfo, keep: Tensor | None = None
            ) -> PatternOutput:
        """Profile the heads on sampled rows, then one kernel call with each head in its chosen order; optional key
        padding ``keep (B, N)`` (on text tokens: both orders keep the text last, in place)."""
        from ...kernels import BlockLUT

        cfg, scale, block = self.config, info.scale, plan.block
        kinds = [plan.candidates[kind] for kind in _KINDS]
        st = plan.tables
        rows = self.sampled_rows(plan, info)
        token_masks = [block_token_mask(kd.mask, kd.inv, block, rows) for kd in kinds]
        if keep is not None:
            token_masks = [tm & keep[:1] for tm in token_masks]
        choice, _ = profile_heads(q, k, v, token_masks, rows, scale)  # (H,) 0 spatial / 1 temporal
        heads = q.shape[1]
        hsel = torch.arange(heads, device=q.device)[:, None]
        perm, inv = st["perm"][choice], st["inv"][choice]  # (H, N)
        lut = BlockLUT(st["lut"].indices[:, choice], st["lut"].counts[:, choice], block, block, trusted=True,
                       key_blocks=st["lut"].key_blocks)
        kv_keep = None if keep is None else keep.index_select(1, kinds[0].perm)
        out, stats = run_block_sparse(q[:, hsel, perm], k[:, hsel, perm], v[:, hsel, perm], lut, scale, cfg,
                                      kv_keep)
        out = out[:, hsel, inv]
        density = st["density"][choice].mean()
        temporal = choice.sum()
        details = {"temporal_heads": temporal, "spatial_heads": heads - temporal}
        return PatternOutput(out, density, effective_density(density, stats), details)
