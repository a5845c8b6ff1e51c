"""Timing: synchronised stopwatches, interleaved repeats, the denoiser / attention time breakdown, and the
median and spread of repeated runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def synchronize(device) -> None:
    """Wait for queued GPU work on ``device`` (no-op on CPU)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


class Stopwatch:
    """``with Stopwatch(device) as sw: ...`` then ``sw.seconds``; synchronises ``device`` before and after."""

    def __init__(self, device="cpu"):
        self.device = device
        self.seconds = float("nan")

    def __enter__(self):
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start
        return False


def time_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int = 1, repeats: int = 3,
                     device="cpu") -> dict[str, dict]:
    """Time each callable of ``fns`` after ``warmup`` untimed rounds, ``repeats`` rounds interleaved (every
    round runs all of them, in a rotating order, so a drifting machine load hits all alike).

    Returns ``{name: {"seconds": [...], "median": s, "min": s, "result": last return value}}``.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out = {name: {"seconds": [], "result": None} for name in names}
    for r in range(max(1, repeats)):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            with Stopwatch(device) as sw:
                out[name]["result"] = fns[name]()
            out[name]["seconds"].append(sw.seconds)
    for entry in out.values():
        entry["median"] = median(entry["seconds"])
        entry["min"] = min(entry["seconds"])
    return out



def median(values: list[float]) -> float:
    """The median of ``values`` (not empty)."""
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def spread(values: list[float]) -> float | None:
    """The relative spread of repeated timings: (max - min) / median; None for fewer than two values."""
    values = [v for v in values if isinstance(v, (int, float))]
    if len(values) < 2:
        return None
    mid = median(values)
    return (max(values) - min(values)) / mid if mid > 0 else None


def _attention_modules(model) -> list:
    try:
        from diffusers.models.attention import AttentionModuleMixin
        from diffusers.models.attention_processor import Attention
        classes: tuple = (Attention, AttentionModuleMixin)
    except ImportError:  # pragma: no cover - older diffusers
        from diffusers.models.attention_processor import Attention
        classes = (Attention,)
    return [m for m in model.modules() if isinstance(m, classes)]


class BreakdownTimer:
    """Time spent in the denoiser and in its attention modules during a block, via forward hooks.

    On CUDA the hooks record CUDA events (no synchronisation inside the run); on CPU they read the clock.
    ``with BreakdownTimer(denoiser, device) as t: pipe(...)`` then ``t.denoiser_s``, ``t.attention_s``,
    ``t.attention_share`` (attention / denoiser). ``groups`` ({name: modules}) times other module groups instead of
    every attention module (e.g. self- and cross-attention apart); ``t.seconds`` holds every group's seconds, the
    denoiser's under ``"denoiser"``.
    """

    def __init__(self, denoiser, device="cpu", groups: dict[str, list] | None = None):
        import torch

        self.denoiser = denoiser
        self.cuda = torch.device(device).type == "cuda"
        self._groups = groups
        self.seconds: dict[str, float] = {"denoiser": 0.0, **dict.fromkeys(groups or ("attention",), 0.0)}
        self._handles = []
        self._events: dict[str, list] = {kind: [] for kind in self.seconds}

    @property
    def denoiser_s(self) -> float:
        return self.seconds["denoiser"]

    @property
    def attention_s(self) -> float:
        return self.seconds.get("attention", 0.0)

    def _mark(self, kind: str):
        import torch

        stack: list = []

        def pre(module, args, kwargs=None):
            if self.cuda:
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                stack.append(event)
            else:
                stack.append(time.perf_counter())

        def post(module, args, output, kwargs=None):
            start = stack.pop()
            if self.cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                self._events[kind].append((start, end))
            else:
                self.seconds[kind] += time.perf_counter() - start

        return pre, post

    def __enter__(self):
        if self.denoiser is None:
            return self
        groups = self._groups if self._groups is not None else {"attention": _attention_modules(self.denoiser)}
        for kind, modules in (("denoiser", [self.denoiser]), *groups.items()):
            for module in modules:
                pre, post = self._mark(kind)
                self._handles.append(module.register_forward_pre_hook(pre))
                self._handles.append(module.register_forward_hook(post))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            for kind, events in self._events.items():
                self.seconds[kind] = sum(a.elapsed_time(b) for a, b in events) / 1000
        return False

    @property
    def attention_share(self) -> float | None:
        return self.attention_s / self.denoiser_s if self.denoiser_s > 0 else None

    def as_dict(self) -> dict:
        return {"denoiser_s": self.denoiser_s, "attention_s": self.attention_s,
                "attention_share": self.attention_share}

