"""The wrapping processor: diffusers' stock processor runs unchanged; only its attention call goes to a method."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import types
import weakref
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .._logging import log_once
from ..config import MethodConfig, Schedule
from ..layout import LayoutState, TokenLayout
from ..methods.base import AttentionMethod, CallInfo
from .intercept import SDPAInterceptor

try:  # diffusers >= 0.35: processors of newer families call dispatch_attention_fn
    from diffusers.models.attention_dispatch import attention_backend as _attention_backend
except ImportError:  # pragma: no cover - older diffusers call SDPA directly
    _attention_backend = None

logger = logging.getLogger(__name__)

# Keyword arguments a standalone processor (no known stock processor yet) accepts from diffusers; only those the
# resolved stock processor declares are passed on.
_STANDALONE_KWARGS = ("encoder_hidden_states", "attention_mask", "temb", "image_rotary_emb", "rotary_emb")


@dataclass
class Runtime:
    """State shared by all wrappers of one applied model: the method, its schedule, the layout tracker, counters."""

    method: AttentionMethod
    config: MethodConfig | None = None
    schedule: Schedule = field(default_factory=Schedule)
    state: LayoutState | None = None
    num_layers: int = 1
    stats: Counter = field(default_factory=Counter)

    def step(self) -> tuple[int, int | None]:
        if self.state is None:
            return -1, None
        return self.state.step, self.state.num_steps


def default_stock_processor(attn: torch.nn.Module):
    """The processor diffusers would give ``attn`` by default (used when a processor is set standalone)."""
    cls = getattr(type(attn), "_default_processor_cls", None)
    if cls is not None:
        return cls()
    from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0

    if getattr(attn, "context_pre_only", None) is not None:
        return JointAttnProcessor2_0()
    return AttnProcessor2_0()


def _native_backend():
    return _attention_backend("native") if _attention_backend is not None else contextlib.nullcontext()


@functools.cache
def _accepted_kwargs(processor_cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(processor_cls.__call__).parameters)


def _signature_with_self(sig: inspect.Signature) -> inspect.Signature:
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sig.replace(parameters=[self_param, *sig.parameters.values()])


class AttnplugProcessor:
    """A diffusers attention processor that runs a stock processor and routes its attention call to a method.

    Built by :func:`attnplug.apply` (which passes the module's own processor as ``stock``), or standalone:
    ``model.set_attn_processor(AttnplugProcessor(config))`` resolves the module's default stock processor at the first
    call and infers a square token grid unless ``layout`` is given.

    Cross-attention calls, calls outside the schedule, and calls a method hands back run the stock SDPA call as is.
    """

    def __init__(
        self,
        method: AttentionMethod | MethodConfig,
        stock=None,
        *,
        layout: TokenLayout | None = None,
        runtime: Runtime | None = None,
        name: str = "",
        index: int = 0,
        selected: bool = True,
        is_cross: bool = False,
    ):
        if isinstance(method, MethodConfig):
            method = method.build()
        if not isinstance(method, AttentionMethod):
            raise TypeError(
                f"AttnplugProcessor needs a method config (e.g. attnplug.AgentConfig()) or an AttentionMethod, "
                f"got {type(method).__name__}."
            )
        self.runtime = runtime or Runtime(method=method)
        self.layout = layout
        self.name, self.index, self.selected, self.is_cross = name, index, selected, is_cross
        self._standalone_stock: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.stock = None
        self.set_stock(stock)

    @property
    def method(self) -> AttentionMethod:
        return self.runtime.method

    def set_stock(self, stock) -> None:
        """(Re)wrap ``stock`` and expose its ``__call__`` signature, since diffusers passes a processor only the
        keyword arguments its signature declares (RoPE embeddings would otherwise be dropped silently)."""
        self.stock = stock
        if stock is None:
            params = [
                inspect.Parameter("attn", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                inspect.Parameter("hidden_states", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            ] + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in _STANDALONE_KWARGS]
            sig = inspect.Signature(params)
        else:
            sig = inspect.signature(stock.__call__)

        def __call__(self, *args, **kwargs):
            return type(self).__call__(self, *args, **kwargs)

        __call__.__signature__ = _signature_with_self(sig)
        # An instance attribute shadows the class's __call__ for attribute access (what diffusers inspects);
        # calling the processor still goes through the class's __call__ below.
        self.__dict__["__call__"] = types.MethodType(__call__, self)

    def __getattr__(self, item):
        # Attributes diffusers may read from a processor (e.g. `_attention_backend`) fall through to the stock one.
        stock = self.__dict__.get("stock")
        if stock is None or item.startswith("__"):
            raise AttributeError(item)
        return getattr(stock, item)

    def __repr__(self) -> str:
        method, stock = type(self.method).__name__, type(self.stock).__name__
        return f"AttnplugProcessor({method}, stock={stock}, name={self.name!r})"

    def _stock_for(self, attn):
        if self.stock is not None:
            return self.stock
        stock = self._standalone_stock.get(attn)
        if stock is None:
            stock = self._standalone_stock[attn] = default_stock_processor(attn)
            log_once(logger, logging.DEBUG, f"standalone {type(self.method).__name__}: stock {type(stock).__name__}")
        return stock

    def __call__(self, attn, hidden_states, *args, **kwargs):
        stock = self._stock_for(attn)
        if self.stock is None:
            accepted = _accepted_kwargs(type(stock))
            kwargs = {k: v for k, v in kwargs.items() if k in accepted and v is not None}
        interceptor = SDPAInterceptor(lambda **sdpa: self._attend(attn, **sdpa))
        backend = getattr(stock, "_attention_backend", None)
        if backend is not None:
            stock._attention_backend = None  # dispatch_attention_fn: use the active (native) backend below
        try:
            with _native_backend(), interceptor:
                out = stock(attn, hidden_states, *args, **kwargs)
        finally:
            if backend is not None:
                stock._attention_backend = backend
        if interceptor.calls == 0:
            self.runtime.stats["passthrough"] += 1
            log_once(
                logger,
                logging.WARNING,
                f"{type(stock).__name__} in {self.name or type(attn).__name__} made no scaled_dot_product_attention "
                "call, so attnplug could not intercept it; that module ran its stock attention.",
            )
        return out

    def _use_method(self, query, key, attn_mask, dropout_p, is_causal, enable_gqa) -> str | None:
        """Why this call goes to dense attention, or None if the method runs."""
        if self.is_cross or query.shape[-2] != key.shape[-2]:
            return "cross-attention"
        if self.index < 0:
            return "module excluded (not image self-attention)"
        if not self.selected:
            return "layer not selected"
        if dropout_p or is_causal or enable_gqa or query.shape[1] != key.shape[1]:
            return "dropout/causal/GQA call"
        if attn_mask is not None and not self.method.supports_mask:
            return "attention mask given"
        step, num_steps = self.runtime.step()
        if not self.runtime.schedule.step_active(step, num_steps):
            return "step outside the schedule"
        return None

    def _layout_for(self, n: int) -> TokenLayout:
        if self.layout is not None:
            self.layout.check(n)
            return self.layout
        if self.runtime.state is not None:
            return self.runtime.state.layout_for(n, self.name)
        return TokenLayout.square(n)

    def _info(self, scale) -> CallInfo:
        step, num_steps = self.runtime.step()
        state = self.runtime.state
        return CallInfo(
            layer_name=self.name,
            layer_index=self.index,
            num_layers=self.runtime.num_layers,
            step=step,
            num_steps=num_steps,
            scale=scale,
            latent_grid=state.grid if state is not None else None,
        )

    def _cross_attention_hook(self, query, key, value, attn_mask, dropout_p, is_causal, scale) -> torch.Tensor | None:
        method = self.method
        if type(method).cross_attention is AttentionMethod.cross_attention or dropout_p or is_causal:
            return None
        step, num_steps = self.runtime.step()
        if not self.runtime.schedule.step_active(step, num_steps):
            return None
        return method.cross_attention(query, key, value, attn_mask, self._info(scale))

    def _attend(self, attn, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        stats = self.runtime.stats
        stats["calls"] += 1
        reason = self._use_method(query, key, attn_mask, dropout_p, is_causal, enable_gqa)
        if reason is None:
            out = self.method(query, key, value, self._layout_for(query.shape[-2]), attn_mask, self._info(scale))
            if out is not None:
                stats["method"] += 1
                return out
            reason = "method handed the call back"
        elif reason == "cross-attention":
            out = self._cross_attention_hook(query, key, value, attn_mask, dropout_p, is_causal, scale)
            if out is not None:
                stats["method: cross-attention"] += 1
                return out
        stats["dense"] += 1
        stats[f"dense: {reason}"] += 1
        if reason == "attention mask given":
            log_once(logger, logging.WARNING, f"{type(self.method).__name__} does not take attention masks: "
                     "calls with a mask run dense attention.")
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
            enable_gqa=enable_gqa,
        )
