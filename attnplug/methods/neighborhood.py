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

import logging

from .._logging import log_once
from ..kernels.block_sparse.dispatch import needs_backward
from ..kernels.neighborhood import (
    neighborhood_dispatch,
)
from ..layout import TokenLayout
from .base import AttentionMethod, CallInfo
from .neighborhood_config import NEIGHBORHOOD_BACKENDS, NeighborhoodConfig  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

__all__ = ["NEIGHBORHOOD_BACKENDS", "NeighborhoodConfig", "NeighborhoodMethod"]

class NeighborhoodMethod(AttentionMethod):
    """Neighbourhood attention; ``(B, H, N, D)`` in and out.

    Hands the call back (``None``) with reason ``"attention-mask"`` when an attention mask is given and
    ``"window-covers-grid"`` when the window is the whole grid (stock attention computes the same)."""

    uses_steps = False

    def __init__(self, config: NeighborhoodConfig | None = None):
        self.config = config or NeighborhoodConfig()

    def __call__(self, q, k, v, layout: TokenLayout, mask=None, info: CallInfo | None = None):
        if mask is not None:
            return self.hand_back("attention-mask")
        layout.check(q.shape[-2])
        res = self.config.resolve(layout, info)
        if res.is_dense:
            return self.hand_back("window-covers-grid")
        if self.config.backend in ("auto", "triton") and q.device.type == "cuda" and needs_backward(q, k, v):
            log_once(logger, logging.WARNING, "neighborhood: the Triton kernel has no backward, and these inputs "
                     "require grad; those calls run stock attention (backend='tiles' or 'torch' trains through it).")
            return self.hand_back("requires-grad")
        scale = info.scale if info is not None else None
        return neighborhood_dispatch(q, k, v, layout, res, scale=scale, backend=self.config.backend,
                                     block_size=self.config.block_size)
