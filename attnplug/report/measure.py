"""One measured pipeline call: wall time (synchronised), denoiser / attention time and, where it costs nothing
(CUDA), peak allocated memory."""

from __future__ import annotations

import contextlib
from typing import Any

from .memory import PeakMemory, counts_for_free, not_measured
from .timing import BreakdownTimer, Stopwatch


@contextlib.contextmanager
def measure(pipe, device="cpu"):
    """``with measure(pipe, device) as m: pipe(...)``; afterwards ``m["seconds"]``, ``m["timing"]`` and
    ``m["memory"]`` (not measured on CPU, where tracking allocations would slow the timed run: use
    :func:`attnplug.report.peak_memory` in an untimed pass)."""
    from ..loading import denoiser_of

    m: dict[str, Any] = {}
    memory = PeakMemory(device) if counts_for_free(device) else contextlib.nullcontext()
    with memory, BreakdownTimer(denoiser_of(pipe), device) as br, Stopwatch(device) as sw:
        yield m
    m["seconds"] = sw.seconds
    m["timing"] = br.as_dict()
    m["memory"] = memory.as_dict() if isinstance(memory, PeakMemory) else not_measured()
