"""Attention methods: ``out = method(q, k, v, layout, mask, info)`` on ``(B, H, N, D)`` tensors."""

from .agent import AgentConfig, AgentMethod, AgentProcessor, agent_attention
from .base import AttentionMethod, CallInfo
from .dense import DenseConfig, DenseMethod, dense_attention
from .freeswim import FreeSwimConfig, FreeSwimMethod, FreeSwimProcessor, apply_freeswim, remove_freeswim
from .neighborhood import NeighborhoodConfig, NeighborhoodMethod, NeighborhoodProcessor, neighborhood_attention
from .sparse_video import SparseVideoConfig, SparseVideoMethod, SparseVideoProcessor
from .window import WindowConfig, WindowMethod, WindowProcessor, window_attention

__all__ = [
    "AgentConfig",
    "AgentMethod",
    "AgentProcessor",
    "AttentionMethod",
    "CallInfo",
    "DenseConfig",
    "DenseMethod",
    "FreeSwimConfig",
    "FreeSwimMethod",
    "FreeSwimProcessor",
    "NeighborhoodConfig",
    "NeighborhoodMethod",
    "NeighborhoodProcessor",
    "SparseVideoConfig",
    "SparseVideoMethod",
    "SparseVideoProcessor",
    "WindowConfig",
    "WindowMethod",
    "WindowProcessor",
    "agent_attention",
    "apply_freeswim",
    "dense_attention",
    "neighborhood_attention",
    "remove_freeswim",
    "window_attention",
]
