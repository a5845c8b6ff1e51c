"""Peak memory of a block as allocated tensor memory (never process RSS, which every method shares).

On CUDA it is ``torch.cuda.max_memory_allocated`` (free to read, so taken in the timed run); elsewhere
:class:`attnplug._memory.AllocationTracker` counts tensor storages, which slows every op: measure there in an
untimed pass (:func:`peak_memory`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CUDA_KIND = "cuda_max_allocated"
TRACKED_KIND = "tensor_allocations"


def counts_for_free(device) -> bool:
    """Whether peak memory on ``device`` can be read without slowing the run (CUDA's allocator counters)."""
    import torch

    return torch.device(device).type == "cuda"


class PeakMemory:
    """``with PeakMemory(device) as mem: ...`` then ``mem.peak_bytes`` / ``mem.as_dict()``: the peak of tensor memory
    allocated inside the block (CUDA: ``max_memory_allocated``; elsewhere an allocation tracker)."""

    def __init__(self, device="cpu"):
        import torch

        self.device = torch.device(device)
        self.peak_bytes: int | None = None
        self.kind = CUDA_KIND if self.device.type == "cuda" else TRACKED_KIND
        self._tracker = None

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            from .._memory import AllocationTracker

            self._tracker = AllocationTracker().__enter__()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device)) - self._base
        else:
            self._tracker.__exit__(*exc)
            self.peak_bytes = self._tracker.peak
        return False

    def as_dict(self) -> dict:
        return {"kind": self.kind, "peak_mib": None if self.peak_bytes is None else self.peak_bytes / 2**20}


def peak_memory(fn: Callable[[], Any], device="cpu") -> dict:
    """Run ``fn`` once under :class:`PeakMemory` (an untimed pass) and return its ``as_dict()``."""
    with PeakMemory(device) as mem:
        fn()
    return mem.as_dict()


def not_measured() -> dict:
    """The memory entry of a run whose memory was not measured (CPU timed runs; see :func:`peak_memory`)."""
    return {"kind": "not measured in the timed run", "peak_mib": None}
