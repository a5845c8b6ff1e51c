"""Attention methods: ``out = method(q, k, v, layout, mask, info)`` on ``(B, H, N, D)`` tensors."""

from .base import AttentionMethod, CallInfo
from .dense import DenseConfig, DenseMethod, dense_attention

__all__ = ["AttentionMethod", "CallInfo", "DenseConfig", "DenseMethod", "dense_attention"]
