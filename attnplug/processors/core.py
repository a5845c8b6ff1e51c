"""The interception core shared by the module hook (:func:`attnplug.apply`) and the standalone processor.

While a stock diffusers processor runs, its one attention call is caught and its ``(B, H, N, D)`` tensors go to the
method: at the ``dispatch_attention_fn`` or ``F.scaled_dot_product_attention`` name the processor calls
(:mod:`.route`), else as the ``scaled_dot_product_attention`` call a
:class:`~attnplug.processors.intercept.SDPAInterceptor` sees. Where the mode catches a dispatching processor (context
parallelism, compiled graphs) the processor is switched to the native
backend for that one call (by its own ``_attention_backend`` attribute, never the process-global backend); anything
the method hands back runs on the backend the user chose.
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
from ..methods.base import AttentionMethod, CallInfo, MethodWrapper
from .intercept import ACTIVE, SDPAInterceptor
from .mask_forms import fill_masked_rows, is_outer_shaped, outer_key_padding
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


def intercepts_cross(method: AttentionMethod) -> bool:
    """Whether ``method`` may replace cross-attention calls: its class overrides
    :meth:`~attnplug.methods.base.AttentionMethod.cross_attention`; a :class:`MethodWrapper` that only forwards it
    answers for its ``inner`` method (False without one)."""
    own = type(method).cross_attention
    if own is MethodWrapper.cross_attention:
        return isinstance(method, MethodWrapper) and method.inner is not None and intercepts_cross(method.inner)
    return own is not AttentionMethod.cross_attention


class Interception:
    """Runs attention modules' stock processors with their attention call routed to ``method``.

    ``layout_fn(site, n)`` gives the :class:`TokenLayout` of an ``n``-token self-attention call of ``site``;
    ``mask_form`` the family's declared self-attention mask form (:mod:`.mask_forms`), run as a key mask.
    Eager calls are caught at the name the processor calls where the caller routed it (:mod:`.route`; one Python
    call), else by one shared :class:`SDPAInterceptor`; while compiling, by a mode traced into the graph. The call's
    context lives in :data:`~.intercept.ACTIVE` (per thread), so nothing is built per call but a tuple."""

    def __init__(self, method: AttentionMethod, stats: CallStats, layout_fn: Callable[[Site, int], TokenLayout],
                 mask_form: str | None = None):
        self.method = method
        self.stats = stats
        self.layout_fn = layout_fn
        self.mask_form = mask_form  # the family's self-attention mask form (FamilySpec.mask_form), None for none
        self.overrides_cross = intercepts_cross(method)

    def run(self, site: Site, info: CallInfo, processor, forward: Callable, args: tuple, kwargs: dict,
            routed: bool = False):
        """``forward(*args, **kwargs)`` (the module's stock forward or processor call) with its attention call
        intercepted. ``routed``: the name the processor reaches attention through is routed
        (:func:`.route.acquire`)."""
        if torch.compiler.is_compiling():
            return self._run_traced(site, info, processor, forward, args, kwargs)
        active = ACTIVE
        hits = active.hits
        if routed and getattr(processor, "_parallel_config", None) is None:
            previous, active.routed = active.routed, (self, site, info)
            try:
                out = forward(*args, **kwargs)
            finally:
                active.routed = previous
        else:  # Ulysses gathers the sequence inside the backend: catch the SDPA call it makes there
            out = self._run_mode(site, info, processor, forward, args, kwargs)
        if active.hits == hits:
            self._passthrough(processor)
        return out

    def _run_mode(self, site, info, processor, forward, args, kwargs):
        world, rank = context_parallel(processor)
        backend = getattr(processor, "_attention_backend", _ABSENT)
        switch = backend_name(backend) not in (None, "native")
        active = ACTIVE
        previous, active.mode = active.mode, (self, site, info, backend, world, rank)
        if switch:
            processor._attention_backend = AttentionBackendName.NATIVE
        try:
            with _MODE:
                return forward(*args, **kwargs)
        finally:
            active.mode = previous
            if switch:
                processor._attention_backend = backend

    def _run_traced(self, site, info, processor, forward, args, kwargs):
        """The compiled form: a mode built in the trace (dynamo traces a mode entered inside the graph, not one
        from outside); its Python runs once, at trace time."""
        world, rank = context_parallel(processor)
        backend = getattr(processor, "_attention_backend", _ABSENT)
        calls = [0]

        def handler(**sdpa):
            calls[0] += 1
            out = self.attend(site, info, world, rank, **sdpa)
            return out if out is not None else stock_attention(backend, **sdpa)

        # no write when the processor already resolves to native: a compiled graph would otherwise replay the write
        # and its undo, and guard on the attribute it leaves behind
        switch = backend_name(backend) not in (None, "native")
        if switch:
            processor._attention_backend = AttentionBackendName.NATIVE
        try:
            with SDPAInterceptor(handler):
                out = forward(*args, **kwargs)
        finally:
            if switch:
                processor._attention_backend = backend
        if calls[0] == 0:
            self._passthrough(processor)
        return out

    def _passthrough(self, processor) -> None:
        self.stats.passthrough()
        log_once(
            logger,
            logging.WARNING,
            f"{type(processor).__name__} makes no scaled_dot_product_attention call (e.g. attention "
            "slicing or xformers), so the method cannot run in the modules that use it; they ran their stock "
            "attention. Put SDPA processors back (e.g. model.set_attn_processor(AttnProcessor2_0())) to run the "
            "method.",
        )

    def attend_dispatch(self, call: tuple, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        """A routed ``dispatch_attention_fn`` call on ``(B, N, H, D)`` tensors: the method's output in that layout,
        or None to run the stock call (counted)."""
        _, site, info = call
        out = self.attend(site, info, 1, 0, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                          attn_mask, dropout_p, is_causal, scale, enable_gqa)
        return None if out is None else out.transpose(1, 2)

    def attend(self, site, info, world, rank, query, key, value, attn_mask, dropout_p, is_causal, scale,
               enable_gqa) -> torch.Tensor | None:
        """An intercepted attention call on ``(B, H, N, D)`` tensors: the method's output, or None when the call
        runs stock attention (counted here with its reason)."""
        stats = self.stats
        if site.is_cross or query.shape[-2] != key.shape[-2]:
            if self.overrides_cross and not (dropout_p or is_causal):
                out = self.method.cross_attention(query, key, value, attn_mask, info)
                if out is not None:
                    stats.record("cross", "method")
                    return out
            stats.record("cross", "stock", "cross-attention")
            return None
        if dropout_p or is_causal or enable_gqa or query.shape[1] != key.shape[1]:
            reason = "dropout-causal-gqa"
        elif attn_mask is not None and not self.method.supports_mask:
            reason = "mask-unsupported"
            log_once(logger, logging.WARNING, f"{type(self.method).__name__} takes no attention mask; "
                     "calls with a mask run stock attention.")
        else:
            layout = self.layout_fn(site, query.shape[-2])
            mask, kept_rows = broadcast_key_rows(attn_mask), None
            if self.mask_form == "outer-key-padding" and is_outer_shaped(attn_mask, query):
                # the form is read from the mask's values: not inside a compiled graph, nor on a gathered sequence
                eager = world == 1 and not torch.compiler.is_compiling()
                reduced = outer_key_padding(attn_mask, layout) if eager else None
                if reduced is None:
                    log_once(logger, logging.WARNING, "a (B, 1, N, N) self-attention mask that is not the family's "
                             "keep[i] & keep[j] padding mask, or one in a compiled graph or under context "
                             "parallelism (where its values are not read), runs stock attention.")
                    stats.record("self", "stock", "mask-unsupported")
                    return None
                mask, kept_rows = reduced
            if scale is not None and info.scale != scale:
                info = dataclasses.replace(info, scale=scale)
            q, k, v = query, key, value
            if world > 1:
                info = dataclasses.replace(info, head_offset=rank * query.shape[1])
                q, k, v = (to_canonical(x, layout, world) for x in (query, key, value))
            self.method.last_reason()  # drop a code a previous call left on this thread
            out = self.method(q, k, v, layout, mask, info)
            if out is not None:
                stats.record("self", "method")
                if kept_rows is not None:
                    out = fill_masked_rows(out, query, key, value, attn_mask, kept_rows, layout, scale)
                return from_canonical(out, layout, world) if world > 1 else out
            reason = self.method.last_reason() or "handed-back"
        stats.record("self", "stock", reason)
        return None


def broadcast_key_rows(mask):
    """A 4-D mask ``(B, 1|H, Nq, Nk)`` that is one key row broadcast over the query rows and heads (stride 0 along
    them, as ``expand`` makes it: Lumina-Next's key-padding mask) as that row, ``(B, 1, 1, Nk)``; any other mask
    unchanged. Decided from shape and strides only, so a materialised mask is never reduced here (HunyuanVideo 1.5's
    ``(B, 1, N, N)``, which also masks padded query rows, is its family's declared form: :mod:`.mask_forms`)."""
    if (isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[2] > 1 and mask.stride(2) == 0
            and (mask.shape[1] == 1 or mask.stride(1) == 0)):
        return mask[:, :1, :1]
    return mask


def _from_mode(**sdpa) -> torch.Tensor:
    """The shared mode's handler: the SDPA call of the interception running on this thread."""
    ACTIVE.hits += 1
    interception, site, info, backend, world, rank = ACTIVE.mode
    out = interception.attend(site, info, world, rank, **sdpa)
    return out if out is not None else stock_attention(backend, **sdpa)


_MODE = SDPAInterceptor(_from_mode)


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
