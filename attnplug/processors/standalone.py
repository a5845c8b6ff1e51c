"""``AttnplugProcessor``: the standalone, diffusers-style form of the interception core.

``model.set_attn_processor(attnplug.AttnplugProcessor(config))`` puts it on every attention module; at each call it
runs the module's default stock processor with the attention call routed to the method. Without a denoiser hook it
knows no latent shape and no step: give ``layout=TokenLayout(...)`` for non-square grids, and note that the method
runs at every step (use :func:`attnplug.apply` for schedules, multi-level U-Nets and video).
"""

from __future__ import annotations

import functools
import inspect
import weakref

import torch

from ..config import MethodConfig
from ..layout import TokenLayout
from ..methods.base import AttentionMethod, CallInfo
from .core import Interception, Site
from .stats import CallStats


def default_stock_processor(attn: torch.nn.Module):
    """The processor diffusers would give ``attn`` by default."""
    cls = getattr(type(attn), "_default_processor_cls", None)
    if cls is not None:
        return cls()
    from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0

    if getattr(attn, "context_pre_only", None) is not None:
        return JointAttnProcessor2_0()
    return AttnProcessor2_0()


@functools.cache
def _accepted_kwargs(processor_cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(processor_cls.__call__).parameters)


def build_method(config) -> AttentionMethod:
    """The :class:`AttentionMethod` for a config (or a method instance, returned as is)."""
    if isinstance(config, MethodConfig):
        return config.build()
    if isinstance(config, AttentionMethod):
        return config
    if isinstance(config, type) and issubclass(config, MethodConfig):
        raise TypeError(f"config must be a config instance, got the class {config.__name__}; use {config.__name__}().")
    raise TypeError(
        f"config must be an attnplug method config (e.g. attnplug.AgentConfig()) or an AttentionMethod, "
        f"got {type(config).__name__}."
    )


class AttnplugProcessor:
    """A diffusers attention processor running ``config``'s method inside the module's default stock processor.

    ``layout``: the token layout of every self-attention call (default: a square single-frame grid inferred from the
    sequence length). Counters: :func:`attnplug.stats` on the model, or :attr:`stats`.
    Undo with :func:`attnplug.remove` (the module's stock processors come back)."""

    def __init__(self, config, layout: TokenLayout | None = None):
        if layout is not None and not isinstance(layout, TokenLayout):
            raise TypeError(f"layout must be an attnplug.TokenLayout or None, got {type(layout).__name__}.")
        self.method = build_method(config)
        self.layout = layout
        self.stats = CallStats()
        self._interception = Interception(self.method, self.stats, self._layout_for)
        self._stock: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._info = CallInfo()

    def __repr__(self) -> str:
        return f"AttnplugProcessor({type(self.method).__name__}, layout={self.layout})"

    def _layout_for(self, site: Site, n: int) -> TokenLayout:
        if self.layout is not None:
            self.layout.check(n)
            return self.layout
        return TokenLayout.square(n)

    def _stock_for(self, attn):
        entry = self._stock.get(attn)
        if entry is None:
            stock = default_stock_processor(attn)
            site = Site(is_cross=bool(getattr(attn, "is_cross_attention", False)))
            entry = self._stock[attn] = (stock, site)
        return entry

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, temb=None,
                 image_rotary_emb=None, rotary_emb=None, **kwargs):
        # Models call their processor positionally in their own stock order (Flux: image_rotary_emb 5th, Wan:
        # rotary_emb 5th), so extra positionals pass through as they came; keywords go on only where the stock
        # processor declares them.
        stock, site = self._stock_for(attn)
        accepted = _accepted_kwargs(type(stock))
        given = {"temb": temb, "image_rotary_emb": image_rotary_emb, "rotary_emb": rotary_emb, **kwargs}
        if not args:
            given.update(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask)
            head = ()
        else:
            head = (encoder_hidden_states, attention_mask)
        given = {k: v for k, v in given.items() if k in accepted and v is not None}
        return self._interception.run(site, self._info, stock, stock, (attn, hidden_states, *head, *args), given)
