"""Temporal attention regularisation (VSTAR, Li et al. 2024, arXiv 2403.13501) for U-Net video models.

In the temporal (frame-only) attention of AnimateDiff motion modules, a band-diagonal bias is added to the attention
logits: ``bias[i, j] = strength * exp(-(i - j)^2 / (2 sigma^2))`` with ``sigma = sigma_fraction * frames``, so each
frame attends more to its temporal neighbours and less to far frames; with many frames this keeps motion from
averaging out. The bias goes through the attention-mask argument of SDPA (any mask of the call is added to it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...layout import TokenLayout
from ...methods.base import AttentionMethod, CallInfo


def band_bias(frames: int, strength: float, sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """The ``(frames, frames)`` Gaussian band ``strength * exp(-(i - j)^2 / (2 sigma^2))``."""
    i = torch.arange(frames, device=device, dtype=torch.float32)
    d = i[:, None] - i[None, :]
    return (strength * torch.exp(-(d * d) / (2 * sigma * sigma))).to(dtype)


@dataclass
class TemporalBandMethod(AttentionMethod):
    """Attention method for temporal self-attention ``(B, H, F, D)`` (layout ``(F, 1, 1)``): SDPA with the VSTAR
    band bias added to the logits. Calls on spatial layouts (height or width > 1) are handed back."""

    strength: float = 1.0
    sigma_fraction: float = 0.25
    supports_mask = True

    def __post_init__(self):
        if self.sigma_fraction <= 0:
            raise ValueError(f"sigma_fraction must be > 0, got {self.sigma_fraction!r}.")
        self.calls = 0

    def __call__(self, q, k, v, layout: TokenLayout, mask=None, info: CallInfo | None = None):
        if layout.height * layout.width != 1 or layout.text_tokens or q.shape[-2] != k.shape[-2]:
            return None
        f = q.shape[-2]
        bias = band_bias(f, self.strength, max(self.sigma_fraction * f, 1e-3), q.device, q.dtype)
        if mask is not None:
            if mask.dtype == torch.bool:
                mask = torch.zeros(mask.shape, device=q.device, dtype=q.dtype).masked_fill(~mask, float("-inf"))
            bias = bias + mask
        self.calls += 1
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=info.scale if info else None)
