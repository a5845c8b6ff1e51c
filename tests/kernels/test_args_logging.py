"""The package's int-or-tuple rule (attnplug._args.as_tuple) and log_once."""

from __future__ import annotations

import logging

import pytest
import torch

import attnplug._logging as lg
from attnplug._args import as_tuple
from attnplug._cache import BoundedCache


@pytest.mark.parametrize("value, kwargs, expected", [
    (7, dict(spatial=2, fill=None, allow_none=True), (None, 7, 7)),  # spatial int: frames unrestricted
    ((5, 7), dict(spatial=2, fill=None, allow_none=True), (None, 5, 7)),
    ((3, 5, 7), dict(spatial=2, fill=None, allow_none=True), (3, 5, 7)),
    (2, dict(spatial=2, fill=1), (1, 2, 2)),
    (True, dict(kind=bool, spatial=2, fill=False), (False, True, True)),
    (4, dict(), (4, 4, 4)),  # spatial = n: every dimension
    ([1, 2, 3], dict(), (1, 2, 3)),
    (0.5, dict(kind=float, spatial=2, fill=1.0), (1.0, 0.5, 0.5)),
])
def test_as_tuple(value, kwargs, expected):
    assert as_tuple(value, 3, "x", "Owner", **kwargs) == expected


@pytest.mark.parametrize("value, kwargs, exc, match", [
    (True, dict(), TypeError, r"Owner.x must be an int.*got True \(bool\)"),
    (3.0, dict(), TypeError, "must be an int"),
    ((1, 2), dict(), ValueError, r"tuple of 3 of them \(frames, height, width\), got \(1, 2\)"),
    ((1, 2, 3, 4), dict(spatial=2, fill=1), ValueError, "tuple of 2 or 3"),
    ((1, None, 3), dict(), TypeError, "entries must be ints"),
    (0, dict(minimum=1), ValueError, "Owner.x for frames must be >= 1, got 0"),
    ((1, 9), dict(spatial=2, fill=1, maximum=8), ValueError, "Owner.x for width must be <= 8, got 9"),
    ("a", dict(), ValueError, "got 'a'"),
])
def test_as_tuple_errors_name_the_argument(value, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        as_tuple(value, 3, "x", "Owner", **kwargs)


def test_log_once_logs_once_and_not_while_compiling(monkeypatch, caplog):
    monkeypatch.setattr(lg, "_seen", BoundedCache(lg.MAX_REMEMBERED))
    logger = logging.getLogger("attnplug.test_log_once")
    with caplog.at_level(logging.INFO, logger=logger.name):
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        lg.log_once(logger, logging.INFO, "hello")
        assert caplog.records == [] and len(lg._seen) == 0  # nothing logged or remembered while tracing
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
        lg.log_once(logger, logging.INFO, "hello")
        lg.log_once(logger, logging.INFO, "hello")
    assert [r.getMessage() for r in caplog.records] == ["hello"]


def test_log_once_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(lg, "_seen", BoundedCache(10))
    logger = logging.getLogger("attnplug.test_log_once_bound")
    for i in range(50):
        lg.log_once(logger, logging.DEBUG, f"m{i}")
    assert len(lg._seen) == 10
