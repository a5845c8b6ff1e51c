"""Attention methods: ``out = method(q, k, v, layout, mask, info)`` on ``(B, H, N, D)`` tensors."""

from .agent import AgentConfig, AgentMethod
from .base import AttentionMethod, CallInfo
from .dense import DenseConfig, DenseMethod, dense_attention
from .freeswim import FreeSwimConfig, FreeSwimMethod
from .neighborhood import NeighborhoodConfig, NeighborhoodMethod
from .sparse_video import SparseVideoConfig, SparseVideoMethod
from .window import WindowConfig, WindowMethod

__all__ = [
    "AgentConfig",
    "AgentMethod",
    "AttentionMethod",
    "CallInfo",
    "DenseConfig",
    "DenseMethod",
    "FreeSwimConfig",
    "FreeSwimMethod",
    "NeighborhoodConfig",
    "NeighborhoodMethod",
    "SparseVideoConfig",
    "SparseVideoMethod",
    "WindowConfig",
    "WindowMethod",
    "dense_attention",
]
