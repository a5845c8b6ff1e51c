"""The package's one bounded cache, :class:`attnplug._cache.BoundedCache`, where the kernels import it from."""

from __future__ import annotations

from .._cache import BoundedCache

__all__ = ["BoundedCache"]
