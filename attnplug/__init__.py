"""attnplug: training-free attention variants for Hugging Face diffusers pipelines.

What users call lives here: the method configs, :class:`Schedule`, :class:`TokenLayout`, ``apply`` / ``remove`` /
``applied`` / ``stats``, the standalone :class:`AttnplugProcessor` and the kernels. Method classes and the extension
API (``AttentionMethod``, ``CallInfo``) are in :mod:`attnplug.methods`; hi-res and long video in
:mod:`attnplug.pipelines`.

``import attnplug`` loads no torch (PEP 562): each name is imported, with torch where it needs it, when it is first
used. The method configs are registered at import (they need no torch), so :func:`attnplug.config.method_configs`
lists them all.
"""

from __future__ import annotations

from ._lazy import lazy_attributes
from .config import MethodConfig, Schedule
from .methods import configs as _configs  # noqa: F401 - registers the built-in method configs

__version__ = "0.2.0"

# public name -> (submodule, name there)
_LAZY = {
    "FAMILIES": ("layout", "FAMILIES"),
    "TokenLayout": ("layout", "TokenLayout"),
    "AgentConfig": ("methods", "AgentConfig"),
    "DenseConfig": ("methods", "DenseConfig"),
    "FreeSwimConfig": ("methods", "FreeSwimConfig"),
    "NeighborhoodConfig": ("methods", "NeighborhoodConfig"),
    "SparseVideoConfig": ("methods", "SparseVideoConfig"),
    "WindowConfig": ("methods", "WindowConfig"),
    "applied": ("plugin", "applied"),
    "apply": ("plugin", "apply"),
    "method_of": ("plugin", "method_of"),
    "remove": ("plugin", "remove"),
    "reset_stats": ("plugin", "reset_stats"),
    "stats": ("plugin", "stats"),
    "AttnplugProcessor": ("processors", "AttnplugProcessor"),
}

__all__ = [*sorted(_LAZY), "MethodConfig", "Schedule", "__version__", "kernels"]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals(), __all__)
