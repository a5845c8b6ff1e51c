"""Logging helpers: warn once per distinct message (fallbacks are logged once, never silent)."""

from __future__ import annotations

import logging

_seen: set[tuple[str, str]] = set()


def log_once(logger: logging.Logger, level: int, message: str) -> None:
    """Log ``message`` at ``level`` the first time it is seen for ``logger``."""
    key = (logger.name, message)
    if key not in _seen:
        _seen.add(key)
        logger.log(level, message)
