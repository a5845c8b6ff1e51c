"""Dense attention: the exact baseline every other method is compared with."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..layout import TokenLayout
from .base import AttentionMethod, CallInfo
from .dense_config import DENSE_BACKENDS, DenseConfig  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)



def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Exact attention with PyTorch SDPA: ``q (B, H, Nq, D)``, ``k, v (B, H, Nk, D)`` -> ``(B, H, Nq, D)``."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def xformers_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Exact attention with xformers' memory-efficient kernel; same shapes as :func:`dense_attention`."""
    import xformers.ops as xops

    bias = None
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros_like(mask, dtype=q.dtype).masked_fill(~mask, -torch.inf)
        bias = mask
        bias = bias.to(q.dtype).expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    out = xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, scale=scale
    )
    return out.transpose(1, 2)


class DenseMethod(AttentionMethod):
    """Exact attention: SDPA, or xformers when configured."""

    supports_mask = True
    uses_steps = False

    def __init__(self, config: DenseConfig | None = None):
        self.config = config or DenseConfig()
        self._fn = xformers_attention if self.config.backend == "xformers" else dense_attention

    def __call__(self, q, k, v, layout: TokenLayout | None = None, mask=None, info: CallInfo | None = None):
        if self.config.backend == "xformers" and q.device.type != "cuda":
            raise ValueError(f"DenseConfig.backend='xformers' runs on CUDA only, but the inputs are on {q.device}.")
        return self._fn(q, k, v, mask, info.scale if info else None)
