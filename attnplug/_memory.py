"""A tensor-allocation tracker: the peak bytes of tensor storage allocated inside a block, on any device.

CUDA has ``torch.cuda.max_memory_allocated``; the CPU (and fake or meta tensors, which allocate nothing) have no
counter, so :class:`AllocationTracker` counts the storages created by the ops run inside it (a
``TorchDispatchMode``): a storage counts from the op that makes it until the last tensor on it is freed. Storages that
existed before the block (its inputs) and views of them are not counted.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["AllocationTracker"]


def _key(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # sparse or other storage-less tensors
        return None


class AllocationTracker(TorchDispatchMode):
    """``with AllocationTracker() as mem: ...`` then ``mem.peak`` / ``mem.current`` in bytes.

    Thread-unsafe by design (one block on one thread); slows every op a little: use it in an untimed pass.
    """

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: dict[int, list[int]] = {}  # storage key -> [bytes, tensors alive on it]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t, inputs)
        return out

    def _track(self, t: torch.Tensor, inputs: set) -> None:
        key = _key(t)
        if key is None:
            return
        entry = self._live.get(key)
        if entry is None:
            if key in inputs:  # a view of (or in-place result on) a storage made outside the block
                return
            entry = self._live[key] = [t.untyped_storage().nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._live[key]
            self.current -= entry[0]
