"""Catch the attention call of a stock diffusers processor through a ``TorchFunctionMode``.

A ``TorchFunctionMode`` active during the processor call sees each of its ops and hands the
``scaled_dot_product_attention`` call on ``(B, H, N, D)`` tensors to a handler; every other op runs unchanged. It
costs a Python call per op (20-64 per attention call), so in eager calls it is the fallback: processors
whose module binds a known name are caught at that one call instead (:mod:`.route`); the mode remains for the rest,
for context parallelism and for compiled graphs.

:data:`ACTIVE` holds, per thread, the call being intercepted, so one mode object serves every call and thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
_SDPA = F.scaled_dot_product_attention
_UNFLATTEN = torch.Tensor.unflatten


class _Active(threading.local):
    """The intercepted call running on this thread: ``mode`` (caught by the function mode) or ``routed`` (caught at
    the name its processor calls, :mod:`.route`) holds its context, None when none is caught that way; ``hits``
    counts the attention calls caught, so a processor that made none is noticed."""

    mode = None
    routed = None
    hits = 0


ACTIVE = _Active()


def sdpa_arguments(args: tuple, kwargs: dict) -> dict:
    """Normalise a ``scaled_dot_product_attention`` call's arguments into a dict keyed by :data:`SDPA_ARGS`."""
    bound = dict(SDPA_DEFAULTS)
    bound.update(zip(SDPA_ARGS, args))
    bound.update(kwargs)
    return bound


class SDPAInterceptor(TorchFunctionMode):
    """While active, routes ``F.scaled_dot_product_attention(...)`` to ``handler(**sdpa_arguments)``.

    Stateless (the handler counts what it catches): one instance may be entered again and again, on any thread (the
    mode stack is per thread)."""

    def __init__(self, handler: Callable[..., torch.Tensor]):
        super().__init__()
        self.handler = handler

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is _SDPA:
            # The mode is disabled inside this handler, so attention computed by the method is not re-intercepted.
            return self.handler(**sdpa_arguments(args, kwargs or {}))
        if func is _UNFLATTEN:
            # Tensor.unflatten calls super() in Python, which dynamo cannot trace through a mode; same result.
            return torch.unflatten(*args, **(kwargs or {}))
        if kwargs:
            return func(*args, **kwargs)
        return func(*args)
