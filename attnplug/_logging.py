"""Logging helpers: warn once per distinct message (fallbacks are logged once, never silent)."""

from __future__ import annotations

import logging
import threading

import torch

__all__ = ["log_once"]

#: Distinct (logger, message) pairs remembered; the oldest are forgotten past this (then may be logged again).
MAX_REMEMBERED = 4096

_seen: dict[tuple[str, str], None] = {}
_lock = threading.Lock()


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def log_once(logger: logging.Logger, level: int, message: str) -> None:
    """Log ``message`` at ``level`` the first time it is seen for ``logger`` (thread-safe; a no-op while
    ``torch.compile`` traces, so logging never breaks or retraces a graph)."""
    if _compiling():
        return
    key = (logger.name, message)
    if key in _seen:
        return
    with _lock:
        if key in _seen:
            return
        _seen[key] = None
        while len(_seen) > MAX_REMEMBERED:
            del _seen[next(iter(_seen))]
    logger.log(level, message)
