"""The interception core shared by the module hook (:func:`attnplug.apply`) and the standalone processor.

While a stock diffusers processor runs, a :class:`~attnplug.processors.intercept.SDPAInterceptor` catches its one
``scaled_dot_product_attention`` call and hands the ``(B, H, N, D)`` tensors to the method. Processors that dispatch
through diffusers' attention backends are switched to the native backend for that one call (by their own
``_attention_backend`` attribute, never the process-global backend); anything the method hands back runs on the
backend the user chose.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._logging import log_once
from ..layout import TokenLayout
from ..methods.base import AttentionMethod, CallInfo
from .intercept import SDPAInterceptor
from .stats import CallStats

try:  # diffusers >= 0.35: processors of the newer families call dispatch_attention_fn
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _AttentionBackendRegistry,
        dispatch_attention_fn,
    )
except ImportError:  # pragma: no cover - older diffusers call SDPA directly
    AttentionBackendName = _AttentionBackendRegistry = dispatch_attention_fn = None

logger = logging.getLogger(__name__)
_ABSENT = object()


@dataclass(frozen=True)
class Site:
    """One attention module as the interception sees it: fixed at :func:`attnplug.apply` time."""

    name: str = ""
    index: int = -1  # position among the selected model's image self-attention modules, -1 for others
    is_cross: bool = False
    temporal: bool = False  # attends over frames only (AnimateDiff motion modules)


def backend_name(backend=None) -> str | None:
    """The attention backend a processor's ``_attention_backend`` selects, by name: its own when set, the
    process-wide active one when None, and None for processors that do not dispatch (``_ABSENT``)."""
    if backend is _ABSENT:
        return None
    if backend is None:
        if _AttentionBackendRegistry is None:
            return None
        backend = _AttentionBackendRegistry._active_backend
    return str(getattr(backend, "value", backend))


def context_parallel(processor) -> tuple[int, int]:
    """``(ulysses_degree, ulysses_rank)`` of a processor under diffusers' context parallelism (``(1, 0)`` without).
    ``ValueError`` for ring attention, which attnplug cannot intercept."""
    config = getattr(getattr(processor, "_parallel_config", None), "context_parallel_config", None)
    if config is None:
        return 1, 0
    if (config.ring_degree or 1) > 1:
        raise ValueError(
            f"attnplug supports Ulysses context parallelism only, got ring_degree={config.ring_degree} "
            "(ring attention splits keys across processes, so no process sees a whole attention call). Use "
            "ContextParallelConfig(ulysses_degree=N), or attnplug.remove the model before enabling ring attention."
        )
    degree = config.ulysses_degree or 1
    rank = getattr(config, "_ulysses_local_rank", None) or 0
    return degree, rank


def to_canonical(x: torch.Tensor, layout: TokenLayout, world: int) -> torch.Tensor:
    """Reorder a Ulysses-gathered joint sequence ``(B, H, N, D)`` — each rank's local ``[text_r, image_r]`` (or
    ``[image_r, text_r]``) one after the other — into the single-process order the layout describes."""
    if world == 1 or layout.text_tokens == 0:
        return x
    b, h, n, d = x.shape
    t, i = layout.text_tokens // world, layout.image_tokens // world
    chunks = x.reshape(b, h, world, t + i, d)
    first, second = (t, i) if layout.text_first else (i, t)
    a = chunks[:, :, :, :first].reshape(b, h, world * first, d)
    c = chunks[:, :, :, first:].reshape(b, h, world * second, d)
    return torch.cat([a, c], dim=2)


def from_canonical(x: torch.Tensor, layout: TokenLayout, world: int) -> torch.Tensor:
    """Inverse of :func:`to_canonical`."""
    if world == 1 or layout.text_tokens == 0:
        return x
    b, h, n, d = x.shape
    t, i = layout.text_tokens // world, layout.image_tokens // world
    first, second = (t, i) if layout.text_first else (i, t)
    a = x[:, :, : world * first].reshape(b, h, world, first, d)
    c = x[:, :, world * first :].reshape(b, h, world, second, d)
    return torch.cat([a, c], dim=3).reshape(b, h, n, d)


class Interception:
    """Runs attention modules' stock processors with their attention call routed to ``method``.

    ``layout_fn(site, n)`` gives the :class:`TokenLayout` of an ``n``-token self-attention call of ``site``."""

    def __init__(self, method: AttentionMethod, stats: CallStats, layout_fn: Callable[[Site, int], TokenLayout]):
        self.method = method
        self.stats = stats
        self.layout_fn = layout_fn
        self.overrides_cross = type(method).cross_attention is not AttentionMethod.cross_attention

    def run(self, site: Site, info: CallInfo, processor, call: Callable[[], object]):
        """Run ``call()`` (the module's stock forward or processor call) with its SDPA call intercepted."""
        world, rank = context_parallel(processor)
        user_backend = getattr(processor, "_attention_backend", _ABSENT)
        mode = SDPAInterceptor(lambda **sdpa: self.attend(site, info, user_backend, world, rank, **sdpa))
        # no write when the processor already resolves to native: a compiled graph would otherwise replay the write
        # and its undo, and guard on the attribute it leaves behind
        switch = backend_name(user_backend) not in (None, "native")
        if switch:
            processor._attention_backend = AttentionBackendName.NATIVE
        try:
            with mode:
                out = call()
        finally:
            if switch:
                processor._attention_backend = user_backend
        if mode.calls == 0:
            self.stats.passthrough()
            log_once(
                logger,
                logging.WARNING,
                f"{type(processor).__name__} makes no scaled_dot_product_attention call (e.g. attention "
                "slicing or xformers), so the method cannot run in the modules that use it; they ran their stock "
                "attention. Put SDPA processors back (e.g. model.set_attn_processor(AttnProcessor2_0())) to run the "
                "method.",
            )
        return out

    def attend(self, site, info, user_backend, world, rank, query, key, value, attn_mask, dropout_p, is_causal,
               scale, enable_gqa):
        """The intercepted SDPA call on ``(B, H, N, D)`` tensors: the method's output, or stock attention."""
        stats = self.stats
        if site.is_cross or query.shape[-2] != key.shape[-2]:
            if self.overrides_cross and not (dropout_p or is_causal):
                out = self.method.cross_attention(query, key, value, attn_mask, info)
                if out is not None:
                    stats.record("cross", "method")
                    return out
            stats.record("cross", "stock", "cross-attention")
            return stock_attention(user_backend, query, key, value, attn_mask, dropout_p, is_causal, scale,
                                   enable_gqa)
        if dropout_p or is_causal or enable_gqa or query.shape[1] != key.shape[1]:
            reason = "dropout-causal-gqa"
        elif attn_mask is not None and not self.method.supports_mask:
            reason = "mask-unsupported"
            log_once(logger, logging.WARNING, f"{type(self.method).__name__} takes no attention mask; "
                     "calls with a mask run stock attention.")
        else:
            layout = self.layout_fn(site, query.shape[-2])
            if scale is not None and info.scale != scale:
                info = dataclasses.replace(info, scale=scale)
            q, k, v = query, key, value
            if world > 1:
                info = dataclasses.replace(info, head_offset=rank * query.shape[1])
                q, k, v = (to_canonical(x, layout, world) for x in (query, key, value))
            self.method.last_reason()  # drop a code a previous call left on this thread
            out = self.method(q, k, v, layout, attn_mask, info)
            if out is not None:
                stats.record("self", "method")
                return from_canonical(out, layout, world) if world > 1 else out
            reason = self.method.last_reason() or "handed-back"
        stats.record("self", "stock", reason)
        return stock_attention(user_backend, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def stock_attention(backend, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False) -> torch.Tensor:
    """Attention on ``(B, H, N, D)`` tensors through the backend the processor (or the process) was set to."""
    name = backend_name(backend)
    if name is None or name == "native" or dispatch_attention_fn is None:
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
            enable_gqa=enable_gqa,
        )
    out = dispatch_attention_fn(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attn_mask, dropout_p=dropout_p,
        is_causal=is_causal, scale=scale, enable_gqa=enable_gqa, backend=AttentionBackendName(name),
    )
    return out.transpose(1, 2)
