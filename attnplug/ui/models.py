"""Loaded pipelines, cached by (name, device, dtype) with one lock per model: switching methods reuses the weights,
and one model runs one generation at a time."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


def embedded_models() -> list[str]:
    """Names of the models shipped inside attnplug (offline)."""
    from ..models import available_models

    return available_models()


@dataclass
class LoadedModel:
    """A pipeline in the cache, with its lock and whether its one-off first-call costs were paid."""

    name: str
    pipe: Any
    lock: threading.Lock
    embedded: bool
    warm: bool = False


def load_pipeline(name: str, device: str, dtype):
    """``attnplug.loading.load`` with safetensors only: a model that ships only pickle weights is refused."""
    from ..loading import load

    try:
        return load(name, device=device, dtype=dtype, use_safetensors=True)
    except OSError as exc:
        raise ValueError(f"model={name!r} could not be loaded with safetensors weights: {exc}") from None


class ModelCache:
    """Loaded pipelines by (name, device, dtype), at most ``capacity``; a model that is generating is never evicted."""

    def __init__(self, device: str | None = None, dtype=None, capacity: int = 2):
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype or torch.float32
        self.capacity = capacity
        self._entries: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times weights were read (the cache's hit rate is visible in tests)

    def get(self, name: str) -> LoadedModel:
        key = (name, self.device, str(self.dtype))
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            pipe = load_pipeline(name, self.device, self.dtype)
            self.loads += 1
            entry = LoadedModel(name, pipe, threading.Lock(), name in embedded_models())
            self._entries[key] = entry
            for old in list(self._entries)[:-1]:
                if len(self._entries) <= self.capacity:
                    break
                if self._entries[old].lock.acquire(blocking=False):
                    self._entries.pop(old).lock.release()
            return entry
