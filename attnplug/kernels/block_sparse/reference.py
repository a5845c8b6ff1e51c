"""Plain, readable fp32 ground truth for block-sparse attention (materialises the N x N mask: small N only)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .lut import DEFAULT_BLOCK_M, DEFAULT_BLOCK_N, BlockLUT
from .masks import NeighborhoodMask

__all__ = ["block_sparse_reference", "check_damp", "check_kv_keep", "damp_block_mask", "damp_scores",
           "threshold_keep_mask"]


def check_kv_keep(kv_keep: Tensor | None, batch: int, n_k: int, device: torch.device) -> None:
    """Raises unless ``kv_keep`` is None or a bool tensor ``(B|1, N_k)`` on ``device`` (metadata only, no sync)."""
    if kv_keep is None:
        return
    if not isinstance(kv_keep, Tensor):
        raise TypeError(f"kv_keep must be a bool torch.Tensor (B|1, N_k) or None, got {type(kv_keep).__name__}.")
    if kv_keep.dtype != torch.bool or kv_keep.dim() != 2 or kv_keep.shape[0] not in (1, batch) \
            or kv_keep.shape[1] != n_k:
        raise ValueError(
            f"kv_keep must be a bool tensor of shape (1 or {batch}, {n_k}) (batch, keys), got dtype {kv_keep.dtype} "
            f"and shape {tuple(kv_keep.shape)}."
        )
    if kv_keep.device != device:
        raise ValueError(f"kv_keep is on {kv_keep.device} but k is on {device}; put both on one device.")


def check_damp(damp: Tensor | None, factor, lut: BlockLUT | None) -> None:
    """Raises unless ``damp`` is None or a bool tensor of ``lut.indices``' shape on its device (one flag per LUT entry)
    and ``factor`` a finite number > 0 (metadata only, no sync)."""
    if damp is None:
        return
    if lut is None:
        raise ValueError("damp flags one entry of the LUT each: give the lut they belong to (lut=None has none).")
    if not isinstance(damp, Tensor):
        raise TypeError(f"damp must be a bool torch.Tensor shaped like lut.indices or None, got "
                        f"{type(damp).__name__}.")
    if damp.dtype != torch.bool or tuple(damp.shape) != tuple(lut.indices.shape):
        raise ValueError(
            f"damp must be a bool tensor of lut.indices' shape {tuple(lut.indices.shape)} (one flag per LUT entry), "
            f"got dtype {damp.dtype} and shape {tuple(damp.shape)}."
        )
    if damp.device != lut.indices.device:
        raise ValueError(f"damp is on {damp.device} but the lut is on {lut.indices.device}; put both on one device.")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"damp_factor must be a finite number > 0, got {factor!r}.")


def damp_block_mask(lut: BlockLUT, damp: Tensor, num_k_blocks: int) -> Tensor:
    """Bool ``(B|1, H|1, num_q_blocks, num_k_blocks)``: True where a listed key block's LUT entry is flagged in
    ``damp``; computed on the LUT's device without a host sync (padding entries dropped)."""
    valid = torch.arange(lut.max_k_blocks, device=lut.indices.device) < lut.counts[..., None]
    idx = torch.where(valid, lut.indices.long(), num_k_blocks)  # padding entries land in a column cut below
    out = torch.zeros(*lut.counts.shape, num_k_blocks + 1, dtype=torch.bool, device=lut.indices.device)
    return out.scatter_(-1, idx, damp & valid)[..., :num_k_blocks]


def damp_scores(scores: Tensor, far: Tensor | bool, factor: float) -> Tensor:
    """UltraViCo's rule on scaled scores: the positive scores where ``far`` is True are multiplied by ``factor``."""
    return torch.where(far & (scores > 0), scores * factor, scores)


def _token_mask(lut: BlockLUT | None, neighborhood: NeighborhoodMask | None, batch: int, heads: int, n_q: int,
                n_k: int, device: torch.device) -> Tensor:
    """Boolean ``(B|1, H|1, n_q, n_k)`` mask: key block listed in the LUT AND allowed by the neighbourhood."""
    mask = torch.ones(1, 1, n_q, n_k, dtype=torch.bool, device=device)
    if lut is not None:
        mk = math.ceil(n_k / lut.block_n)
        blocks = lut.to(device).to_block_mask(mk)  # (B|1, H|1, Mq, Mk)
        q_block = torch.arange(n_q, device=device) // lut.block_m
        k_block = torch.arange(n_k, device=device) // lut.block_n
        mask = blocks[:, :, q_block][:, :, :, k_block]
    if neighborhood is not None:
        q_idx = torch.arange(n_q, device=device)
        k_idx = torch.arange(n_k, device=device)
        mask = mask & neighborhood.allowed(q_idx[:, None], k_idx[None, :])
    return mask


def threshold_keep_mask(scores: Tensor, lut: BlockLUT, threshold: float) -> tuple[Tensor, Tensor]:
    """Which LUT entries survive ``threshold`` skipping, walking each LUT row in order like the kernels do.

    Args:
        scores: fp32 ``(B, H, n_q, n_k)`` scaled scores with disallowed pairs set to ``-inf``.
        lut: the table being walked (broadcast over B and H).
        threshold: natural-log units, > 0.

    Returns:
        ``(keep, skipped)``: ``keep`` bool ``(B, H, n_q, n_k)`` (False on the keys of skipped blocks) and ``skipped``
        int64 ``(B, H, num_q_blocks)`` (number of skipped entries per query block).

    Rule: ``m`` starts at ``-inf`` per query row; for each listed key block, ``s_blk`` is the row max of the block's
    scores. The block is skipped iff no query row of the block has ``s_blk > m - threshold``; then
    ``m = max(m, s_blk)`` (a skipped block cannot raise ``m``, so skipping never changes later decisions).
    """
    batch, heads, n_q, n_k = scores.shape
    bm, bn = lut.block_m, lut.block_n
    keep = torch.ones_like(scores, dtype=torch.bool)
    skipped = torch.zeros(batch, heads, lut.num_q_blocks, dtype=torch.int64)
    indices = lut.indices.expand(batch, heads, -1, -1).tolist()
    counts = lut.counts.expand(batch, heads, -1).tolist()
    for b in range(batch):
        for h in range(heads):
            for i in range(lut.num_q_blocks):
                rows = slice(i * bm, min(n_q, (i + 1) * bm))
                m = torch.full((rows.stop - rows.start,), -math.inf, dtype=scores.dtype, device=scores.device)
                for j in indices[b][h][i][: counts[b][h][i]]:
                    cols = slice(j * bn, min(n_k, (j + 1) * bn))
                    s_blk = scores[b, h, rows, cols].amax(-1)
                    if not bool((s_blk > m - threshold).any()):
                        keep[b, h, rows, cols] = False
                        skipped[b, h, i] += 1
                    m = torch.maximum(m, s_blk)
    return keep, skipped


def block_sparse_reference(q: Tensor, k: Tensor, v: Tensor, lut: BlockLUT | None = None, *,
                           neighborhood: NeighborhoodMask | None = None, scale: float | None = None,
                           threshold: float | None = None, return_stats: bool = False,
                           kv_keep: Tensor | None = None, damp: Tensor | None = None, damp_factor: float = 1.0):
    """Dense masked fp32 ground truth of :func:`block_sparse_attention`.

    Args:
        q: ``(B, H, N_q, D)``; k, v: ``(B, H, N_k, D)``.
        lut: key blocks visited per query block (None = all).
        neighborhood: optional element mask from token coordinates.
        scale: softmax scale, default ``1 / sqrt(D)``.
        threshold: optional in-flight skipping threshold (see :func:`threshold_keep_mask`).
        return_stats: also return ``{'skipped_blocks': int}``.
        kv_keep: optional bool ``(B|1, N_k)``; keys where it is False are excluded for every query (key padding).
        damp: optional bool flags shaped like ``lut.indices``: the positive scaled scores of a flagged entry's key
            block are multiplied by ``damp_factor`` (UltraViCo damping), before masking and threshold skipping.
        damp_factor: the factor of the flagged entries.

    Returns:
        fp32 ``(B, H, N_q, D)`` (rows without any allowed key are zero) [, stats].
    """
    batch, heads, n_q, dim = q.shape
    n_k = k.shape[2]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    qf, kf, vf = q.float(), k.float(), v.float()
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale  # (B, H, N_q, N_k)
    check_kv_keep(kv_keep, batch, n_k, k.device)
    if damp is not None:
        check_damp(damp, damp_factor, lut)
        lut_d = lut.to(q.device)
        far = damp_block_mask(lut_d, damp.to(q.device), math.ceil(n_k / lut.block_n))
        q_block = torch.arange(n_q, device=q.device) // lut.block_m
        k_block = torch.arange(n_k, device=q.device) // lut.block_n
        scores = damp_scores(scores, far[:, :, q_block][:, :, :, k_block], damp_factor)
    mask = _token_mask(lut, neighborhood, batch, heads, n_q, n_k, q.device)
    if kv_keep is not None:
        mask = mask & kv_keep[:, None, None, :]
    mask = mask.expand(batch, heads, n_q, n_k)
    scores = scores.masked_fill(~mask, -math.inf)
    skipped = 0
    if threshold is not None:
        if lut is None:
            lut = BlockLUT.full(n_q, n_k, DEFAULT_BLOCK_M, DEFAULT_BLOCK_N, device=q.device)
        keep, per_block = threshold_keep_mask(scores, lut, threshold)
        scores = scores.masked_fill(~keep, -math.inf)
        skipped = int(per_block.sum())
    row_max = scores.amax(-1, keepdim=True)
    empty = torch.isneginf(row_max)
    weights = torch.exp(scores - torch.where(empty, torch.zeros_like(row_max), row_max))
    denom = weights.sum(-1, keepdim=True)
    out = torch.matmul(weights, vf) / torch.where(empty, torch.ones_like(denom), denom)
    if return_stats:
        return out, {"skipped_blocks": skipped}
    return out
