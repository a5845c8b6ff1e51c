"""Attention of the hi-res stages: the softmax-scale adjustment for sequences longer than the training one."""

from __future__ import annotations

import dataclasses
import math

import torch.nn.functional as F

from ..layout import TokenLayout
from ..methods.base import AttentionMethod, CallInfo, MethodWrapper


class LogScaledAttention(MethodWrapper):
    """Self-attention with the softmax scale grown by ``sqrt(log N / log N_train)`` (the entropy-preserving scale of
    arXiv 2306.08645, used by hi-res methods so longer sequences keep the training attention entropy), then
    ``inner`` (or dense SDPA when ``inner`` is None).

    ``N`` is the number of keys a query sees: the call's key count for dense attention; methods that restrict
    attention to a training-sized window (neighbourhood, FreeSwim) keep the training scale, so wrap only dense or
    global methods. ``(B, H, N, D)`` in and out. The rest of ``inner``'s protocol (model hook, cross-attention,
    prepare, report) passes through (:class:`~attnplug.methods.base.MethodWrapper`).
    """

    wrapper_supports_mask = True

    def __init__(self, train_tokens: int, inner: AttentionMethod | None = None):
        if train_tokens < 2:
            raise ValueError(f"LogScaledAttention: train_tokens must be >= 2, got {train_tokens!r}.")
        super().__init__(inner)
        self.train_tokens = int(train_tokens)

    def factor(self, n: int, train: int | None = None) -> float:
        """Multiplier of the softmax scale for ``n`` keys (1 at or below ``train``, default the training length)."""
        return math.sqrt(max(1.0, math.log(n) / math.log(train or self.train_tokens)))

    def __call__(self, q, k, v, layout: TokenLayout, mask=None, info: CallInfo | None = None):
        train = self.train_tokens
        if info is not None and info.train_grid is not None:
            train = max(2, math.prod(info.train_grid))
        base = info.scale if info is not None and info.scale is not None else 1.0 / math.sqrt(q.shape[-1])
        scale = base * self.factor(k.shape[-2], train)
        if self.inner is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        info = dataclasses.replace(info if info is not None else CallInfo(), scale=scale)
        return self.inner(q, k, v, layout, mask, info)
