"""Every built-in method config, importable without torch: importing this module registers them all with
:func:`attnplug.config.method_configs`, so the CLI can list and validate methods before torch loads."""

from __future__ import annotations

from .agent_config import AgentConfig
from .dense_config import DenseConfig
from .freeswim_config import FreeSwimConfig
from .neighborhood_config import NeighborhoodConfig
from .sparse_video_config import SparseVideoConfig
from .window_config import WindowConfig

__all__ = ["AgentConfig", "DenseConfig", "FreeSwimConfig", "NeighborhoodConfig", "SparseVideoConfig", "WindowConfig"]
