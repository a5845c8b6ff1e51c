"""Structured counters of what ran in the attention calls of one applied model (or one standalone processor).

Counts are indexed by ``(kind, outcome, reason)`` keys: Python ints in eager calls (cheap), and a small integer
tensor inside a ``torch.compile`` graph, where an in-graph tensor update replaces a Python value the graph would
guard on (and recompile for).
"""

from __future__ import annotations

import threading

import torch

from ..reasons import CORE

#: Reason codes for a call that ran stock attention instead of the method: the interception core's codes (methods
#: register theirs in :mod:`attnplug.reasons`, the one registry).
REASONS = CORE
KINDS = ("self", "cross")


class CallStats:
    """Counts per attention kind (``"self"`` / ``"cross"``): calls, method, stock, and the reason of every stock call.

    :meth:`as_dict` gives the structure :func:`attnplug.stats` returns."""

    _CAPACITY = 256

    def __init__(self):
        self._lock = threading.Lock()
        self._index: dict[tuple, int] = {}
        self._counts = torch.zeros(self._CAPACITY, dtype=torch.int64)  # compiled calls
        self._traced = False  # whether a compiled graph counts into _counts (else reading it is skipped)
        self._eager = [0] * self._CAPACITY  # eager calls
        for kind in KINDS:
            for outcome in ("calls", "method", "stock"):
                self._slot((kind, outcome))
            for reason in REASONS:
                self._slot((kind, "reason", reason))
        self._slot(("passthrough",))
        self._slots: dict[tuple, tuple[int, ...]] = {}  # (kind, outcome, reason) -> the slots record() counts

    def __deepcopy__(self, memo):
        copy_ = CallStats.__new__(CallStats)
        copy_._lock = threading.Lock()
        copy_._index = dict(self._index)
        copy_._slots = dict(self._slots)
        copy_._counts = self._counts.clone()
        copy_._traced = self._traced
        copy_._eager = list(self._eager)
        return copy_

    def _slot(self, key: tuple) -> int:
        i = self._index.get(key)
        if i is None:
            if len(self._index) >= self._CAPACITY:  # an unbounded stream of reason codes: fold the rest together
                return self._index.setdefault((key[0], "reason", "other"), self._CAPACITY - 1)
            i = self._index[key] = len(self._index)
        return i

    def _count(self, *keys: tuple) -> None:
        if torch.compiler.is_compiling():  # in-graph tensor updates; the graph replays them, no lock to trace
            self._traced = True
            for key in keys:
                self._counts[self._slot(key)] += 1
            return
        with self._lock:
            for key in keys:
                self._eager[self._slot(key)] += 1

    def record(self, kind: str, outcome: str, reason: str | None = None) -> None:
        """Count one call of ``kind`` ("self"/"cross") that ran ``outcome`` ("method"/"stock", with ``reason``)."""
        if torch.compiler.is_compiling():
            self._count(*_keys(kind, outcome, reason))
            return
        slots = self._slots.get((kind, outcome, reason))
        with self._lock:
            if slots is None:
                slots = self._slots[(kind, outcome, reason)] = tuple(map(self._slot, _keys(kind, outcome, reason)))
            eager = self._eager
            for i in slots:
                eager[i] += 1

    def passthrough(self) -> None:
        """Count a call whose processor made no ``scaled_dot_product_attention`` call (nothing to intercept)."""
        self._count(("passthrough",))

    def clear(self) -> None:
        with self._lock:
            self._counts.zero_()
            self._eager = [0] * self._CAPACITY

    def as_dict(self) -> dict:
        """``{"self": {"calls", "method", "stock", "reasons": {code: n}}, "cross": {...}, "passthrough": n}``."""
        with self._lock:
            compiled = self._counts.tolist() if self._traced else [0] * self._CAPACITY
            counts = [a + b for a, b in zip(compiled, self._eager)]
            index = dict(self._index)
        value = {key: counts[i] for key, i in index.items()}
        out: dict = {}
        for kind in KINDS:
            reasons = {key[2]: n for key, n in value.items() if key[0] == kind and len(key) == 3 and n}
            out[kind] = {
                "calls": value[(kind, "calls")],
                "method": value[(kind, "method")],
                "stock": value[(kind, "stock")],
                "reasons": dict(sorted(reasons.items())),
            }
        out["passthrough"] = value[("passthrough",)]
        return out


def _keys(kind: str, outcome: str, reason: str | None) -> tuple:
    if reason is None:
        return (kind, "calls"), (kind, outcome)
    return (kind, "calls"), (kind, outcome), (kind, "reason", reason)


def merge_stats(parts: list[dict]) -> dict:
    """Sum several :meth:`CallStats.as_dict` results (e.g. a pipeline's two denoisers)."""
    out: dict = {kind: {"calls": 0, "method": 0, "stock": 0, "reasons": {}} for kind in KINDS}
    out["passthrough"] = 0
    for part in parts:
        for kind in KINDS:
            mine, theirs = out[kind], part.get(kind, {})
            for key in ("calls", "method", "stock"):
                mine[key] += theirs.get(key, 0)
            for reason, n in theirs.get("reasons", {}).items():
                mine["reasons"][reason] = mine["reasons"].get(reason, 0) + n
        out["passthrough"] += part.get("passthrough", 0)
    return out
