"""Attention of the hi-res stages: the softmax-scale adjustment for sequences longer than the training one."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from ..layout import TokenLayout
from ..methods.base import AttentionMethod, CallInfo


class LogScaledAttention(AttentionMethod):
    """Self-attention with the softmax scale grown by ``sqrt(log N / log N_train)`` (the entropy-preserving scale of
    arXiv 2306.08645, used by hi-res methods so longer sequences keep the training attention entropy), then
    ``inner`` (or dense SDPA when ``inner`` is None).

    ``N`` is the number of keys a query sees: the call's key count for dense attention; methods that restrict
    attention to a training-sized window (neighbourhood, FreeSwim) keep the training scale, so wrap only dense or
    global methods. ``(B, H, N, D)`` in and out.
    """

    supports_mask = True

    def __init__(self, train_tokens: int, inner: AttentionMethod | None = None):
        if train_tokens < 2:
            raise ValueError(f"train_tokens must be >= 2, got {train_tokens}.")
        self.train_tokens = int(train_tokens)
        self.inner = inner
        self.supports_mask = inner.supports_mask if inner is not None else True

    def factor(self, n: int) -> float:
        """Multiplier of the softmax scale for ``n`` keys (1 at or below the training length)."""
        return math.sqrt(max(1.0, math.log(n) / math.log(self.train_tokens)))

    def __call__(self, q, k, v, layout: TokenLayout, mask=None, info: CallInfo | None = None):
        train = self.train_tokens
        if info is not None and info.train_grid is not None:
            train = max(2, info.train_grid[0] * info.train_grid[1] * info.train_grid[2])
        base = info.scale if info is not None and info.scale is not None else 1.0 / math.sqrt(q.shape[-1])
        scale = base * math.sqrt(max(1.0, math.log(k.shape[-2]) / math.log(train)))
        if self.inner is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        info = dataclasses.replace(info if info is not None else CallInfo(), scale=scale)
        return self.inner(q, k, v, layout, mask, info)

    def reset(self) -> None:
        if self.inner is not None:
            self.inner.reset()

    def cross_attention(self, q, k, v, mask, info):
        return None if self.inner is None else self.inner.cross_attention(q, k, v, mask, info)

    def attach(self, model: torch.nn.Module) -> None:
        if self.inner is not None:
            self.inner.attach(model)

    def detach(self, model: torch.nn.Module) -> None:
        if self.inner is not None:
            self.inner.detach(model)
