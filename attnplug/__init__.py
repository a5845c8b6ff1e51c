"""attnplug: training-free attention variants for Hugging Face diffusers pipelines.

What users call lives here: the method configs, :class:`Schedule`, :class:`TokenLayout`, ``apply`` / ``remove`` /
``applied`` / ``stats``, the standalone :class:`AttnplugProcessor` and the kernels. Method classes and the extension
API (``AttentionMethod``, ``CallInfo``) are in :mod:`attnplug.methods`; hi-res and long video in
:mod:`attnplug.pipelines`.
"""

from . import kernels
from .config import MethodConfig, Schedule
from .layout import FAMILIES, TokenLayout
from .methods import AgentConfig, DenseConfig, FreeSwimConfig, NeighborhoodConfig, SparseVideoConfig, WindowConfig
from .plugin import applied, apply, method_of, remove, reset_stats, stats
from .processors import AttnplugProcessor

__version__ = "0.2.0"

__all__ = [
    "FAMILIES",
    "AgentConfig",
    "AttnplugProcessor",
    "DenseConfig",
    "FreeSwimConfig",
    "MethodConfig",
    "NeighborhoodConfig",
    "Schedule",
    "SparseVideoConfig",
    "TokenLayout",
    "WindowConfig",
    "__version__",
    "applied",
    "apply",
    "kernels",
    "method_of",
    "remove",
    "reset_stats",
    "stats",
]
