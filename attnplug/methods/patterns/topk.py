"""Dynamic block selection from mean-pooled Q/K scores, with Rectified SpaAttn's rectification.

Blocks are runs of ``block`` consecutive tokens (of a permuted sequence). With block means ``qp_i``, ``kp_j``, ``vp_j``
and key-block sizes ``n_j``, the pooled estimate of the attention mass that query block ``i`` puts on key block ``j``
is ``P_ij = softmax_j(scale * qp_i . kp_j + log n_j)``. The selected (critical) set ``S_i`` is the top
``ceil(density * M)`` blocks by ``P_ij`` (or the smallest prefix reaching cumulative mass ``mass``, capped by that
budget), always including the diagonal block and global (text) blocks.

Block-sparse attention normalises the softmax over ``S_i`` only; full attention is
``O = m_S * O_S + sum_{j not in S} m_j * O_j`` (``m``: true block masses). Rectification (Rectified SpaAttn, arXiv
2511.19835; IPAR + GAPR) estimates it from the pooled scores:

- a skipped block ``j`` is *compensated* when its pooling gain beats its pooling error (GAPR):
  ``|qp_i . kp_j| > |dq_i . kp_j| + |qp_i . dk_j|`` with ``dq_i = mean_t |q_t - qp_i|`` over block ``i``'s queries and
  ``dk_j`` likewise for keys; with ``rectify='all'`` every skipped block is compensated;
- ``out_i = R_i * O_S + sum_{j compensated} P_ij * vp_j`` with ``R_i = 1 - sum_{j compensated} P_ij`` (the kept
  blocks are re-weighted by their estimated share of the mass; uncompensated skipped blocks leave their mass to
  ``S_i``, which is what plain block-sparse attention does with all of it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...layout import TokenLayout
from ..base import CallInfo
from ..dense import dense_attention
from .base import (
    ConfiguredPattern,
    PatternOutput,
    Plan,
    effective_density,
    full_permutation,
    pattern_keep,
    run_block_sparse,
    take,
)
from .common import first_global_block, inverse_permutation
from .tiles import tile_major_order

__all__ = [
    "TopkPattern",
    "apply_rectification",
    "gapr_compensable",
    "pool_blocks",
    "pooled_block_probs",
    "rectification_terms",
    "select_blocks",
]


#: Query-block rows selected at a time: the float32 temporaries are ``(B, H, CHUNK_BLOCKS, M)`` slices instead of
#: the whole ``(B, H, M, M)`` score matrix.
CHUNK_BLOCKS = 64
#: Blocks pooled at a time: the float32 temporaries are ``(B, H, POOL_BLOCKS * block, D)`` slices of the tokens.
POOL_BLOCKS = 32


def pool_blocks(x: Tensor, block: int, deviations: bool = True, weights: Tensor | None = None
                ) -> tuple[Tensor, Tensor | None, Tensor]:
    """Block means of ``x (B, H, N, D)`` (and, if ``deviations``, mean absolute deviations), in float32.

    Args:
        weights: optional ``(B|1, N)`` 0/1 weights (1 = token counts, e.g. the keys a padding mask keeps).

    Returns:
        ``(mean (B, H, M, D), mean_abs_dev (B, H, M, D), sizes)`` with ``M = ceil(N / block)``; ``sizes`` is the
        token count per block, ``(M,)`` (``(B|1, 1, M)`` with ``weights``); the last block may be partial (its
        statistics use its real tokens only). Works :data:`POOL_BLOCKS` blocks at a time, so no float32 copy of
        ``x`` is made.
    """
    b, h, n, d = x.shape
    m = math.ceil(n / block)
    valid = torch.ones(1, n, dtype=x.dtype, device=x.device) if weights is None else weights.to(x.dtype)
    means, devs, counts = [], [], []
    for c0 in range(0, m, POOL_BLOCKS):
        c1 = min(m, c0 + POOL_BLOCKS)
        lo, hi = c0 * block, min(n, c1 * block)
        tail = (c1 - c0) * block - (hi - lo)
        xs, ws = x[:, :, lo:hi], valid[:, lo:hi]
        if tail:  # only the last chunk: pad it to whole blocks with zero-weight tokens
            xs = torch.nn.functional.pad(xs, (0, 0, 0, tail))
            ws = torch.nn.functional.pad(ws, (0, tail))
        xb = xs.unflatten(2, (c1 - c0, block))  # (B, H, c, block, D)
        wb = ws.unflatten(1, (c1 - c0, block))[:, None, :, :, None]  # (B|1, 1, c, block, 1)
        cnt = wb.sum(3, dtype=torch.float32)  # (B|1, 1, c, 1)
        xw = xb if weights is None else xb * wb  # 0/1 weights: exact in x's dtype
        mean = xw.sum(3, dtype=torch.float32) / cnt.clamp(min=1)
        means.append(mean)
        counts.append(cnt[..., 0])
        if deviations:
            devs.append(((xb.float() - mean[:, :, :, None]).abs() * wb).sum(3) / cnt.clamp(min=1))
    sizes = torch.cat(counts, -1)
    if weights is None:
        sizes = sizes[0, 0]
    return torch.cat(means, 2), torch.cat(devs, 2) if deviations else None, sizes


def pooled_block_probs(qp: Tensor, kp: Tensor, k_sizes: Tensor, scale: float) -> Tensor:
    """Pooled attention mass ``P (B, H, Mq, Mk)`` from block means ``qp (B, H, Mq, D)``, ``kp (B, H, Mk, D)``."""
    logits = torch.matmul(qp, kp.transpose(-1, -2)) * scale + torch.log(k_sizes)
    return torch.softmax(logits, dim=-1)


def select_blocks(probs: Tensor, budget: int, forced: Tensor | None = None, mass: float | None = None) -> Tensor:
    """Bool ``(B, H, Mq, Mk)`` critical-block mask.

    Args:
        probs: pooled masses ``(B, H, Mq, Mk)``.
        budget: blocks kept per query row (>= 1); with ``mass``, the most kept.
        forced: bool broadcastable to ``probs``: blocks always kept (diagonal, text). They take budget first.
        mass: if set, keep the smallest top prefix whose cumulative pooled mass reaches ``mass`` (at most ``budget``
            blocks, at least the forced ones).
    """
    mk = probs.shape[-1]
    budget = max(1, min(int(budget), mk))
    key = probs.clone()
    if forced is not None:
        key = key.masked_fill(forced, 2.0)  # above any probability: forced blocks rank first
    # Only the `budget` best-ranked blocks can be kept: a partial top-k instead of a full sort.
    top = torch.topk(key, budget, dim=-1, sorted=True).indices
    keep_sorted = torch.ones_like(top, dtype=torch.bool)
    if mass is not None:
        sorted_p = torch.gather(probs, -1, top)
        before = torch.cumsum(sorted_p, -1) - sorted_p  # mass of the blocks ranked above
        keep_sorted &= before < mass
    mask = torch.zeros_like(probs, dtype=torch.bool)
    mask.scatter_(-1, top, keep_sorted)
    if forced is not None:
        mask |= forced
    return mask


def gapr_compensable(qp: Tensor, q_dev: Tensor, kp: Tensor, k_dev: Tensor) -> Tensor:
    """Bool ``(B, H, Mq, Mk)``: where the pooled score's magnitude (the gain of compensating the block) exceeds the
    estimated pooling error ``|dq_i . kp_j| + |qp_i . dk_j|`` (all ``(B, H, M, D)`` block statistics)."""
    gain = torch.matmul(qp, kp.transpose(-1, -2)).abs()
    err = torch.matmul(q_dev, kp.transpose(-1, -2)).abs() + torch.matmul(qp, k_dev.transpose(-1, -2)).abs()
    return gain > err


def rectification_terms(
    probs: Tensor, selected: Tensor, compensable: Tensor | None, vp: Tensor
) -> tuple[Tensor, Tensor]:
    """``(R (B, H, Mq), comp (B, H, Mq, D))`` for ``out_i = R_i * O_S_i + comp_i``.

    Args:
        probs: pooled masses ``(B, H, Mq, Mk)``; selected: critical blocks (same shape, bool);
        compensable: bool (same shape) or None (= all); vp: value block means ``(B, H, Mk, D)``.
    """
    comp_mask = ~selected if compensable is None else (~selected & compensable)
    p = probs * comp_mask
    return 1.0 - p.sum(-1), torch.matmul(p, vp)


def apply_rectification(out: Tensor, r: Tensor, comp: Tensor, block: int) -> Tensor:
    """``out (B, H, N, D)`` -> ``R_i * out + comp_i`` for the tokens of each query block ``i`` (``r (B, H, M)``,
    ``comp (B, H, M, D)``, ``M = ceil(N / block)``; the last block may be partial). Updates ``out`` in place (in its
    dtype) and returns it."""
    n = out.shape[2]
    full = n // block
    r, comp = r.to(out.dtype), comp.to(out.dtype)
    if full:
        ob = out[:, :, : full * block].unflatten(2, (full, block))
        ob.mul_(r[:, :, :full, None, None]).add_(comp[:, :, :full, None])
    if full * block < n:
        tail = out[:, :, full * block:]
        tail.mul_(r[:, :, full:, None]).add_(comp[:, :, full:])
    return out


def _forced(rows: Tensor, m: int, first_global: int) -> Tensor:
    """Bool ``(c, M)``: blocks always kept by image query-block ``rows`` (the diagonal and the text blocks)."""
    cols = torch.arange(m, device=rows.device)
    return (cols[None, :] == rows[:, None]) | (cols[None, :] >= first_global)


class TopkPattern(ConfiguredPattern):
    """``pattern="topk"``: per call, the key blocks with the largest pooled scores (``density`` budget or
    ``topk_mass``), diagonal and text blocks always kept, with the configured rectification.

    The table is built on the device from ``torch.topk`` indices (already in visiting order, strongest first), a
    :data:`CHUNK_BLOCKS`-row slice of the pooled scores at a time; query blocks holding text attend densely."""

    name = "topk"
    video_only = False

    def plan(self, layout: TokenLayout, device) -> Plan:
        """Only the token order (tile-major when the tile fits); the blocks are chosen per call."""
        image_perm, tile = tile_major_order(layout.grid, self.config)
        perm = full_permutation(image_perm, layout.num_tokens) if image_perm is not None else None
        return Plan(
            layout=layout, block=self.config.block_size, perm=None if perm is None else perm.to(device),
            inv=None if perm is None else inverse_permutation(perm).to(device), details={"tile": tile},
        )

    def run(self, q: Tensor, k: Tensor, v: Tensor, plan: Plan, info: CallInfo, keep: Tensor | None = None
            ) -> PatternOutput:
        """Pool, select, attend the selected blocks, rectify; text-last ``q, k, v (B, H, N, D)``, optional key
        padding ``keep (B, N)``."""
        cfg, scale, block = self.config, info.scale, plan.block
        n, n_img = plan.layout.num_tokens, plan.layout.image_tokens
        qp, kp, vp = take(q, plan.perm), take(k, plan.perm), take(v, plan.perm)
        kv_keep = pattern_keep(plan, keep)
        weights = None if kv_keep is None else kv_keep.to(q.dtype)
        qm, qdev, _ = pool_blocks(qp, block, deviations=cfg.rectify == "gapr")
        km, kdev, ksizes = pool_blocks(kp, block, deviations=cfg.rectify == "gapr", weights=weights)
        vm = pool_blocks(vp, block, deviations=False, weights=weights)[0] if cfg.rectify != "none" else None
        m = km.shape[2]
        g = first_global_block(n_img, n, block)  # query blocks from g on hold text: dense rows
        budget = math.ceil(cfg.density * m)
        width = min(m, max(budget, 1 + (m - g)))
        log_sizes = torch.log(ksizes)  # a block with no kept key gets -inf: weight 0
        b, h = q.shape[:2]
        ranked = torch.empty(b, h, g, width, dtype=torch.int32, device=q.device)  # the LUT, filled in place
        counts = torch.full((b, h, g), width, dtype=torch.int32, device=q.device)
        rect, stats = [], torch.zeros(2, dtype=torch.float32, device=q.device)
        for r0 in range(0, g, CHUNK_BLOCKS):
            r1 = min(g, r0 + CHUNK_BLOCKS)
            logits = torch.matmul(qm[:, :, r0:r1], km.transpose(-1, -2)) * scale + log_sizes[..., None, :]
            probs = torch.softmax(logits, dim=-1)  # (B, H, c, M)
            del logits
            forced = _forced(torch.arange(r0, r1, device=q.device), m, g)
            top = torch.topk(probs.masked_fill(forced, 2.0), width, dim=-1, sorted=True).indices
            ranked[:, :, r0:r1] = top
            if cfg.topk_mass is not None:
                taken = torch.gather(probs, -1, top)
                before = torch.cumsum(taken, -1) - taken  # mass of the blocks ranked above
                counts[:, :, r0:r1] = (before < cfg.topk_mass).sum(-1).clamp(min=1 + (m - g))
            if cfg.rectify != "none":
                rect.append(self._rectify(probs, top, counts[:, :, r0:r1], r0, r1, qm, qdev, km, kdev, vm, stats))
        del qm, qdev, km, kdev, vm  # the pooled statistics are not needed by the kernel call
        out, kernel_stats = self._attend(qp, kp, vp, ranked, counts, g, m, kv_keep, info)
        details: dict = {"budget_blocks": budget}
        if rect:
            r = torch.cat([x[0] for x in rect], -1)
            c = torch.cat([x[1] for x in rect], -2)
            apply_rectification(out[:, :, : g * block], r, c, block)  # in place
            details["compensated_fraction"] = stats[1] / stats[0].clamp(min=1)
        density = self._density(ranked, counts, g, m, n, block, q.device)
        return PatternOutput(take(out, plan.inv), density, effective_density(density, kernel_stats), details)

    def _rectify(self, probs, top, cnt, r0, r1, qm, qdev, km, kdev, vm, stats) -> tuple[Tensor, Tensor]:
        """``(R (B, H, c), comp (B, H, c, D))`` for query-block rows ``r0:r1``; adds skipped and compensated block
        counts to ``stats[0:2]``."""
        width = top.shape[-1]
        kept = torch.arange(width, device=top.device) < cnt[..., None]
        selected = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, top, kept)
        comp = ~selected
        if self.config.rectify == "gapr":
            comp &= gapr_compensable(qm[:, :, r0:r1], qdev[:, :, r0:r1], km, kdev)
        stats[0] += (~selected).sum()
        stats[1] += comp.sum()
        return rectification_terms(probs, selected, comp, vm)

    def _attend(self, qp, kp, vp, ranked, counts, g, m, kv_keep, info) -> tuple[Tensor, dict | None]:
        """The selected blocks of the image query rows (one kernel call) and dense text query rows:
        ``(out (B, H, N, D), kernel statistics or None)``."""
        from ...kernels import BlockLUT

        block, n = self.config.block_size, qp.shape[2]
        parts, stats = [], None
        if g:
            lut = BlockLUT.from_ranked(ranked, counts, block, block, key_blocks=m)
            out, stats = run_block_sparse(qp[:, :, : g * block], kp, vp, lut, info.scale, self.config, kv_keep)
            parts.append(out)
        if g * block < n:  # text query blocks see every (kept) key
            mask = None if kv_keep is None else kv_keep[:, None, None, :]
            parts.append(dense_attention(qp[:, :, g * block:], kp, vp, mask, info.scale))
        return (torch.cat(parts, 2) if len(parts) > 1 else parts[0]), stats

    @staticmethod
    def _density(ranked, counts, g, m, n, block, device) -> Tensor:
        """Fraction of token pairs in the selected blocks (text rows dense), a 0-d device tensor."""
        ksize = torch.full((m,), float(block), dtype=torch.float32, device=device)
        ksize[-1] = n - (m - 1) * block
        pairs = torch.zeros((), dtype=torch.float32, device=device)
        for r0 in range(0, g, CHUNK_BLOCKS):
            top, cnt = ranked[:, :, r0:r0 + CHUNK_BLOCKS], counts[:, :, r0:r0 + CHUNK_BLOCKS]
            kept = torch.arange(top.shape[-1], device=device) < cnt[..., None]
            pairs = pairs + (ksize[top.long()] * kept).sum(-1).mean((0, 1)).sum() * block
        if g * block < n:
            pairs = pairs + (n - g * block) * n
        return pairs / (n * n)
