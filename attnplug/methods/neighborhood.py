"""Neighbourhood attention (NATTEN / GNA semantics) as an attnplug method: config + method.

Every image query attends to a window of ``kernel_size`` neighbours per dimension of the ``(frames, height, width)``
token grid; windows are clamped inside the grid ("inward" windows, FreeSwim's inward sliding window). ``stride``
(GNA), ``dilation`` and ``is_causal`` per dimension; text tokens of joint attention stay global. The kernels (tiles
path, block-sparse kernel, reference) and the functional ops ``na1d`` / ``na2d`` / ``na3d`` live in
:mod:`attnplug.kernels.neighborhood`.

The method clamps kernel dimensions at least as long as the grid (one config serves every U-Net level); a call whose
window covers the whole grid is handed back to stock attention (reason ``"window-covers-grid"``), so the counters
only count calls that really ran restricted.
"""

from __future__ import annotations

import functools
import logging
import math

import torch

from .._logging import log_once
from ..kernels.block_sparse.dispatch import needs_backward
from ..kernels.neighborhood.dispatch import neighborhood_dispatch, uses_block_sparse
from ..layout import TokenLayout
from .base import AttentionMethod, CallInfo
from .neighborhood_config import NEIGHBORHOOD_BACKENDS, NeighborhoodConfig  # noqa: F401 - re-exported
from .patterns.base import key_padding

logger = logging.getLogger(__name__)

__all__ = ["NEIGHBORHOOD_BACKENDS", "NeighborhoodConfig", "NeighborhoodMethod", "fold_key_padding"]


def fold_key_padding(q, k, v, mask, scale: float | None):
    """Fold a boolean key-padding mask ``(B|1, 1, 1, N)`` (True = keep) into one extra head-dim column, so a kernel
    without masks excludes the padded keys: ``q' = [q, 1]``, ``k' = [k, 0 or -M]``, ``v' = [v, 0]`` on ``(B, H, N,
    D)`` give ``scale * q'.k' = scale * q.k`` for kept keys and a logit at least 1000 lower for padded ones (a zero
    weight in float32 and half precision; finite, so no ``-inf - -inf``). Returns ``(q', k', v', scale)``, or None
    for any other mask (decided from its shape and dtype only: nothing is read from the device)."""
    keep = key_padding(mask, q.shape[0], k.shape[-2])
    if keep is None:
        return None
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    penalty = min(1e4 / scale, torch.finfo(k.dtype).max / 4)
    column = torch.zeros(keep.shape, dtype=k.dtype, device=k.device).masked_fill(~keep.to(k.device), -penalty)
    ones = q.new_ones(*q.shape[:-1], 1)
    k1 = torch.cat([k, column[:, None, :, None].expand(*k.shape[:-1], 1)], dim=-1)
    return torch.cat([q, ones], dim=-1), k1, torch.cat([v, v.new_zeros(*v.shape[:-1], 1)], dim=-1), scale

class NeighborhoodMethod(AttentionMethod):
    """Neighbourhood attention; ``(B, H, N, D)`` in and out.

    A boolean key-padding mask (HunyuanVideo's and Qwen-Image's padded prompts) is honoured: padded keys are
    excluded, every other key is unchanged (:func:`fold_key_padding`). Hands the call back (``None``) with reason
    ``"attention-mask"`` for other masks and ``"window-covers-grid"`` when the window is the whole grid (stock
    attention computes the same)."""

    uses_steps = False
    supports_mask = True

    def __init__(self, config: NeighborhoodConfig | None = None):
        self.config = config or NeighborhoodConfig()

    def __call__(self, q, k, v, layout: TokenLayout, mask=None, info: CallInfo | None = None):
        scale = info.scale if info is not None else None
        keep = None
        if mask is not None:
            keep = key_padding(mask, q.shape[0], k.shape[-2])
            if keep is None:
                return self.hand_back("attention-mask")
        layout.check(q.shape[-2])
        res = self.config.resolve(layout, info)
        if res.is_dense:
            return self.hand_back("window-covers-grid")
        if self.config.backend in ("auto", "triton") and q.device.type == "cuda" and needs_backward(q, k, v):
            log_once(logger, logging.WARNING, "neighborhood: the Triton kernel has no backward, and these inputs "
                     "require grad; those calls run stock attention (backend='tiles' or 'torch' trains through it).")
            return self.hand_back("requires-grad")
        run = functools.partial(neighborhood_dispatch, layout=layout, res=res, backend=self.config.backend,
                                block_size=self.config.block_size)
        if keep is None:
            return run(q, k, v, scale=scale)
        if uses_block_sparse(self.config.backend, q.device):  # the kernel leaves the padded keys out itself
            return run(q, k, v, scale=scale, kv_keep=keep.to(k.device))
        q1, k1, v1, scale1 = fold_key_padding(q, k, v, mask, scale)  # tiles / natten / reference take no mask
        return run(q1, k1, v1, scale=scale1)[..., :-1]
