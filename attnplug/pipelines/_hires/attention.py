"""Attention of the hi-res stages: the method each stage applies (MSW-MSA windows for HiDiffusion, a training-size
window for coarse-to-fine refinement, or the user's), and the softmax-scale adjustment for sequences longer than the
training one."""

from __future__ import annotations

import dataclasses
import math

import torch.nn.functional as F

from ...config import Schedule
from ...layout import TokenLayout
from ...methods.base import AttentionMethod, CallInfo, MethodWrapper
from .config import HiResConfig
from .family import Family


class LogScaledAttention(MethodWrapper):
    """Self-attention with the softmax scale grown by ``sqrt(log N / log N_train)`` (the entropy-preserving scale of
    arXiv 2306.08645, used by hi-res methods so longer sequences keep the training attention entropy), then
    ``inner`` (or dense SDPA when ``inner`` is None).

    ``N`` is the number of keys a query sees: the call's key count for dense attention; methods that restrict
    attention to a training-sized window (neighbourhood, FreeSwim) keep the training scale, so wrap only dense or
    global methods. ``(B, H, N, D)`` in and out. The rest of ``inner``'s protocol (model hook, cross-attention,
    prepare, report) passes through (:class:`~attnplug.methods.base.MethodWrapper`).
    """

    wrapper_supports_mask = True

    def __init__(self, train_tokens: int, inner: AttentionMethod | None = None):
        if train_tokens < 2:
            raise ValueError(f"LogScaledAttention: train_tokens must be >= 2, got {train_tokens!r}.")
        super().__init__(inner)
        self.train_tokens = int(train_tokens)

    def factor(self, n: int, train: int | None = None) -> float:
        """Multiplier of the softmax scale for ``n`` keys (1 at or below ``train``, default the training length)."""
        return math.sqrt(max(1.0, math.log(n) / math.log(train or self.train_tokens)))

    def __call__(self, q, k, v, layout: TokenLayout, mask=None, info: CallInfo | None = None):
        train = self.train_tokens
        if info is not None and info.train_grid is not None:
            train = max(2, math.prod(info.train_grid))
        base = info.scale if info is not None and info.scale is not None else 1.0 / math.sqrt(q.shape[-1])
        scale = base * self.factor(k.shape[-2], train)
        if self.inner is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        info = dataclasses.replace(info if info is not None else CallInfo(), scale=scale)
        return self.inner(q, k, v, layout, mask, info)



def _unet_highest_attention(unet) -> tuple[str, int]:
    """Regex of the self-attention modules in the highest-resolution attention blocks, and their level."""
    for i, block in enumerate(unet.down_blocks):
        if getattr(block, "attentions", None):
            j = len(unet.up_blocks) - 1 - i
            return rf"^(down_blocks\.{i}|up_blocks\.{j})\.attentions\.\d+\..*attn1$", i
    raise TypeError(f"{type(unet).__name__} has no attention blocks for MSW-MSA (HiResConfig(windows=False)).")


def _wrap_scale(method, config: HiResConfig, family: Family):
    if not config.attention_scale:
        return method
    h0, w0 = family.train_size
    p = family.vae_factor * (1 if family.is_unet else family.input_multiple)
    return LogScaledAttention(max(2, (h0 // p) * (w0 // p)), inner=method)


def hidiffusion_attention(unet, config: HiResConfig, family: Family):
    """``(method or config, schedule)`` for the HiDiffusion stage, or None for stock attention."""
    if config.attention is not None:
        return _wrap_scale(config.attention if isinstance(config.attention, AttentionMethod)
                           else config.attention.build(), config, family), None
    if not config.windows:
        return (_wrap_scale(None, config, family), None) if config.attention_scale else None
    from ...methods.window import WindowConfig

    regex, level = _unet_highest_attention(unet)
    h0, w0 = family.train_size
    down = family.vae_factor * 2 ** level
    window = WindowConfig(window_size=(max(1, h0 // down), max(1, w0 // down)), shift=config.window_shift,
                          max_level=None)
    return _wrap_scale(window.build(), config, family), Schedule(layers=regex)


def refine_attention(config: HiResConfig, family: Family):
    if config.attention is not None:
        inner = config.attention if isinstance(config.attention, AttentionMethod) else config.attention.build()
        return _wrap_scale(inner, config, family)
    h0, w0 = family.train_size
    # the training grid of the denoiser input: the latent for U-Nets (methods scale it per level), patches for DiTs
    p = family.vae_factor * (1 if family.is_unet else family.input_multiple)
    grid = (max(1, h0 // p), max(1, w0 // p))
    kind = config.local_attention
    if kind == "auto":
        kind = "neighborhood" if family.is_unet else "window"
    if kind == "neighborhood":
        from ...methods.neighborhood import NeighborhoodConfig

        return NeighborhoodConfig.from_training_resolution(grid, family="unet" if family.is_unet else None).build()
    if kind == "window":
        from ...methods.window import WindowConfig

        return WindowConfig(window_size=grid, shift=config.window_shift, max_level=None).build()
    if kind == "freeswim":
        from ...methods.freeswim import FreeSwimConfig

        return FreeSwimConfig(train_grid=grid).build()
    return _wrap_scale(None, config, family) if config.attention_scale else None
