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
from .common import add_global_blocks, inverse_permutation, lut_from_block_mask
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


def pool_blocks(x: Tensor, block: int, deviations: bool = True) -> tuple[Tensor, Tensor | None, Tensor]:
    """Block means of ``x (B, H, N, D)`` (and, if ``deviations``, mean absolute deviations).

    Returns:
        ``(mean (B, H, M, D), mean_abs_dev (B, H, M, D), sizes (M,))`` with ``M = ceil(N / block)``; the last block
        may be partial (its statistics use its real tokens only).
    """
    b, h, n, d = x.shape
    m = math.ceil(n / block)
    pad = m * block - n
    xf = x.float()
    if pad:
        xf = torch.cat([xf, xf.new_zeros(b, h, pad, d)], dim=2)
    xb = xf.view(b, h, m, block, d)
    sizes = torch.full((m,), float(block), device=x.device)
    sizes[-1] = n - (m - 1) * block
    mean = xb.sum(3) / sizes[:, None]
    if not deviations:
        return mean, None, sizes
    dev = (xb - mean[:, :, :, None]).abs()
    if pad:
        valid = (torch.arange(m * block, device=x.device) < n).view(m, block, 1).float()
        dev = dev * valid
    mad = dev.sum(3) / sizes[:, None]
    return mean, mad, sizes


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
    """``out (B, H, N, D)`` -> ``R_i * out + comp_i`` for the tokens of each query block ``i``."""
    n = out.shape[2]
    rt = r.repeat_interleave(block, dim=-1)[..., :n, None]
    ct = comp.repeat_interleave(block, dim=-2)[:, :, :n]
    return (out.float() * rt + ct).to(out.dtype)


class TopkPattern(ConfiguredPattern):
    """``pattern="topk"``: per call, the key blocks with the largest pooled scores (``density`` budget or
    ``topk_mass``), diagonal and text blocks always kept, with the configured rectification."""

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

    def run(self, q: Tensor, k: Tensor, v: Tensor, plan: Plan, info: CallInfo) -> PatternOutput:
        """Pool, select, attend the selected blocks, rectify; text-last ``q, k, v (B, H, N, D)``."""
        cfg, scale, block = self.config, info.scale, plan.block
        n, n_img = plan.layout.num_tokens, plan.layout.image_tokens
        qp, kp, vp = take(q, plan.perm), take(k, plan.perm), take(v, plan.perm)
        qm, qdev, _ = pool_blocks(qp, block)
        km, kdev, ksizes = pool_blocks(kp, block)
        vm = pool_blocks(vp, block, deviations=False)[0]
        probs = pooled_block_probs(qm, km, ksizes, scale)  # (B, H, M, M)
        m = probs.shape[-1]
        forced = add_global_blocks(torch.eye(m, dtype=torch.bool, device=q.device), n_img, n, block)
        budget = math.ceil(cfg.density * m)
        selected = select_blocks(probs, budget, forced, cfg.topk_mass)
        lut = lut_from_block_mask(selected, block, probs if cfg.effective_threshold is not None else None)
        out, stats = run_block_sparse(qp, kp, vp, lut, scale, cfg)
        details: dict = {"budget_blocks": budget}
        if cfg.rectify != "none":
            comp = gapr_compensable(qm, qdev, km, kdev) if cfg.rectify == "gapr" else None
            r, c = rectification_terms(probs, selected, comp, vm)
            out = apply_rectification(out, r, c, block)
            skipped = (~selected).sum()
            compensated = (~selected & comp).sum() if comp is not None else skipped
            details["compensated_fraction"] = float(compensated) / max(int(skipped), 1)
        density = pair_density(selected, n, block)
        return PatternOutput(take(out, plan.inv), density, effective_density(density, stats), details)
