"""Logging helpers: say a degraded mode once per use (a pipeline call, an ``applied`` block, a CLI run), never
silently and never once per attention call."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import torch

from ._cache import BoundedCache

__all__ = ["log_once", "log_scope", "scoped"]

#: Distinct (logger, message) pairs remembered per scope; past this the oldest are forgotten (then logged again).
MAX_REMEMBERED = 4096

# Messages seen in the current scope; outside any scope, one memory for the process (a bare model called in a loop).
_scope: ContextVar[BoundedCache | None] = ContextVar("attnplug_log_scope", default=None)
_seen = BoundedCache(MAX_REMEMBERED)


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


@contextlib.contextmanager
def log_scope() -> Iterator[None]:
    """Inside this block :func:`log_once` remembers messages for the block only (per thread / async context), so the
    next use (a second pipeline call, another benchmark entry) says them again. Scopes nest: an inner scope starts
    empty."""
    token = _scope.set(BoundedCache(MAX_REMEMBERED))
    try:
        yield
    finally:
        _scope.reset(token)


def scoped(fn: Callable) -> Callable:
    """Run ``fn`` (a pipeline entry point) in its own :func:`log_scope`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with log_scope():
            return fn(*args, **kwargs)

    return wrapper


def log_once(logger: logging.Logger, level: int, message: str) -> None:
    """Log ``message`` at ``level`` the first time it is seen for ``logger`` in the current :func:`log_scope` (the
    process when no scope is open). Thread-safe; a no-op while ``torch.compile`` traces, so logging never breaks or
    retraces a graph."""
    if _compiling():
        return
    seen = _scope.get()
    if (_seen if seen is None else seen).add((logger.name, message)):
        logger.log(level, message, stacklevel=2)
