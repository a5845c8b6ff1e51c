"""The package's one bounded, thread-safe cache: plans and look-up tables (keys include the device), layouts read from
tensor values, method instances per window, the messages :func:`attnplug._logging.log_once` has said.

At the bottom of the import order (only torch), so every layer can use it."""

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

    def __deepcopy__(self, memo) -> BoundedCache:
        # A cache holds derived values only: a copied model starts with an empty one (and its own lock).
        return type(self)(self.max_entries)

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The cached value of ``key``, or ``default`` (a plain lookup: traceable)."""
        return self._data.get(key, default)

    def add(self, key: Hashable, value: Any = True) -> bool:
        """Store ``value`` under ``key`` unless it is there already; whether it was new."""
        with self._lock:
            if key in self._data:
                return False
            self._store(key, value)
            return True

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
            self._store(key, value)
        return value

    def _store(self, key: Hashable, value: Any) -> None:  # under the lock
        self._data[key] = value
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
