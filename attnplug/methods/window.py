"""Shifted-window attention whose shift changes with the denoising step (HiDiffusion's MSW-MSA, arXiv 2311.17528).

The ``(frames, height, width)`` grid is cut into non-overlapping windows (Swin-style) and attention runs inside each
window; before partitioning the grid is rolled cyclically by a shift that changes from step to step, so window
borders move and information crosses them over the denoising run (tokens wrapped around an edge share a window with
the opposite edge, as in HiDiffusion). The partitioning kernel and its brute-force reference live in
:mod:`attnplug.kernels.window`; this module holds the config and the method (which layers, which shift).

Layers: ``max_level=0`` (default) windows only the highest-resolution *attention* level of the model
(``CallInfo.level == 0``: the top U-Net attention blocks, every DiT layer), as HiDiffusion does; coarser levels and
calls whose window covers the whole grid are handed back to stock attention.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from .._logging import log_once
from ..kernels._cache import BoundedCache
from ..kernels.window import shift_tables, shifted_window_attention
from ..layout import TokenLayout
from .base import AttentionMethod, CallInfo
from .neighborhood import fold_key_padding
from .window_config import RANDOM_PERIOD, SHIFT_MODES, WindowConfig  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

_RANDOM_TABLES = BoundedCache(16)


class WindowMethod(AttentionMethod):
    """Shifted-window attention on ``(B, H, N, D)`` self-attention calls. Stateless (safe to share between threads).

    A boolean key-padding mask is honoured (padded keys excluded, :func:`~attnplug.methods.neighborhood.
    fold_key_padding`). Hands a call back (returns None) for other masks, when its attention level is above
    ``max_level`` or when one window covers the whole grid (window attention would be dense attention)."""

    supports_mask = True

    def __init__(self, config: WindowConfig | None = None):
        self.config = config or WindowConfig()

    def __call__(self, q, k, v, layout: TokenLayout, mask=None, info: CallInfo | None = None):
        """``q, k, v (B, H, N, D)`` laid out as ``layout`` -> ``(B, H, N, D)``, or None to hand the call back
        (reason codes ``attention-mask``, ``level-above-max-level``, ``window-covers-grid``)."""
        info = info or CallInfo()
        if mask is not None:
            folded = fold_key_padding(q, k, v, mask, info.scale)
            if folded is None:
                return self.hand_back("attention-mask")
            out = self(*folded[:3], layout, None, dataclasses.replace(info, scale=folded[3]))
            return None if out is None else out[..., :-1]
        if self.config.max_level is not None and info.level > self.config.max_level:
            return self.hand_back("level-above-max-level")
        plan = self.config.plan(layout)
        if plan.is_dense:
            log_once(logger, logging.DEBUG, f"window attention: the window {plan.window} covers the token grid "
                     f"{layout.grid} in {info.layer_name or 'a layer'}; stock attention there")
            return self.hand_back("window-covers-grid")
        tables = shift_tables(plan, self.config.num_shifts, q.device)
        return shifted_window_attention(q, k, v, layout, tables, self._shift(info, q.device), info.scale)

    def _shift(self, info: CallInfo, device: torch.device) -> int | torch.Tensor:
        """The call's shift position: from ``info.step_tensor`` when the step tracker gives one (a tensor, so a
        compiled graph serves every step), else from ``info.step``."""
        if info.step_tensor is None or self.config.shift == "none":
            return self.config.shift_index(info.step)
        step = info.step_tensor
        return self.config.shift_index_tensor(step if step.device == device else step.to(device))
