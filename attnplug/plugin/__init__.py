"""``apply`` / ``remove`` / ``applied`` / ``stats``: put attnplug's hooks on every denoiser of a pipeline and take
them off exactly. No processor is replaced: the stock ones stay where they are (see :mod:`attnplug.processors`).

- :mod:`.api`: what users call;
- :mod:`.denoisers`: which denoisers and attention modules (the one discovery function, :func:`resolve_denoisers`);
- :mod:`.schedule`: the schedule of a call;
- :mod:`.install`: planning, installing and uninstalling on one denoiser.
"""

from __future__ import annotations

from .api import applied, apply, method_of, remove, reset_stats, stats
from .denoisers import attention_modules, is_cross_attention_module, resolve_denoisers

__all__ = [
    "applied", "apply", "attention_modules", "is_cross_attention_module", "method_of", "remove", "reset_stats",
    "resolve_denoisers", "stats",
]
