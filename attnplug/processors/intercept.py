"""Catch the attention call of a stock diffusers processor.

Every stock processor ends in ``torch.nn.functional.scaled_dot_product_attention`` on ``(B, H, N, D)`` tensors,
directly (``AttnProcessor2_0``, CogVideoX, HunyuanVideo) or through ``dispatch_attention_fn``'s native backend
(Flux, Wan, LTX; switched to native for the intercepted call only). A ``TorchFunctionMode`` active during the
processor call catches exactly that call and hands it to a handler; every other op runs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}


def sdpa_arguments(args: tuple, kwargs: dict) -> dict:
    """Normalise a ``scaled_dot_product_attention`` call's arguments into a dict keyed by :data:`SDPA_ARGS`."""
    bound = dict(SDPA_DEFAULTS)
    bound.update(zip(SDPA_ARGS, args))
    bound.update(kwargs)
    return bound


class SDPAInterceptor(TorchFunctionMode):
    """While active, routes ``F.scaled_dot_product_attention(...)`` to ``handler(**sdpa_arguments)``."""

    def __init__(self, handler: Callable[..., torch.Tensor]):
        super().__init__()
        self.handler = handler
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.calls += 1
            # The mode is disabled inside this handler, so attention computed by the method is not re-intercepted.
            return self.handler(**sdpa_arguments(args, kwargs))
        if func is torch.Tensor.unflatten:
            # Tensor.unflatten calls super() in Python, which dynamo cannot trace through a mode; same result.
            return torch.unflatten(*args, **kwargs)
        return func(*args, **kwargs)
