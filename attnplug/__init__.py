"""attnplug: training-free attention variants for Hugging Face diffusers pipelines."""

from . import kernels
from .config import MethodConfig, Schedule
from .layout import FAMILIES, TokenLayout
from .methods import (
    AgentConfig,
    AgentMethod,
    AgentProcessor,
    AttentionMethod,
    CallInfo,
    DenseConfig,
    DenseMethod,
    FreeSwimConfig,
    FreeSwimMethod,
    FreeSwimProcessor,
    NeighborhoodConfig,
    NeighborhoodMethod,
    NeighborhoodProcessor,
    SparseVideoConfig,
    SparseVideoMethod,
    SparseVideoProcessor,
    WindowConfig,
    WindowMethod,
    WindowProcessor,
)
from .plugin import applied, apply, method_of, remove, reset_stats, stats
from .processors import AttnplugProcessor

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "AgentConfig",
    "AgentMethod",
    "AgentProcessor",
    "AttentionMethod",
    "AttnplugProcessor",
    "CallInfo",
    "DenseConfig",
    "DenseMethod",
    "FreeSwimConfig",
    "FreeSwimMethod",
    "FreeSwimProcessor",
    "MethodConfig",
    "NeighborhoodConfig",
    "NeighborhoodMethod",
    "NeighborhoodProcessor",
    "Schedule",
    "SparseVideoConfig",
    "SparseVideoMethod",
    "SparseVideoProcessor",
    "TokenLayout",
    "WindowConfig",
    "WindowMethod",
    "WindowProcessor",
    "__version__",
    "applied",
    "apply",
    "kernels",
    "method_of",
    "remove",
    "reset_stats",
    "stats",
]
