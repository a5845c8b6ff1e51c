"""A small bounded, thread-safe cache for plans and look-up tables (keys include the device)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch

__all__ = ["BoundedCache"]


class BoundedCache:
    """Least-recently-inserted cache of at most ``max_entries`` values.

    Lookups are a plain ``dict.get`` (no lock, nothing for ``torch.compile`` to trace beyond it); building, inserts
    and evictions run outside compiled graphs (``torch.compiler.disable``) and take a lock. Two threads missing the
    same key both build the value; the first insert wins and both get an equal value. Unlike
    ``functools.lru_cache``, dynamo traces through the lookup instead of skipping the wrapper.
    """

    def __init__(self, max_entries: int):
        if max_entries < 1:
            raise ValueError(f"BoundedCache.max_entries must be >= 1, got {max_entries}.")
        self.max_entries = max_entries
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_build(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The cached value of ``key``, built by ``build()`` on a miss."""
        value = self._data.get(key)
        if value is not None:
            return value
        return self._insert(key, build)

    @torch.compiler.disable
    def _insert(self, key: Hashable, build: Callable[[], Any]) -> Any:
        # Not traced by torch.compile: plans are built once, in eager mode, and enter graphs as inputs.
        value = build()
        with self._lock:
            existing = self._data.get(key)
            if existing is not None:
                return existing
            self._data[key] = value
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
