"""FreeSwim-style dual path for high-resolution video DiTs (arXiv 2511.14712, training-free).

Two ideas, both above the training resolution:

1. **Inward sliding-window self-attention**: every query attends to a window the size of the training-resolution
   token grid, shifted inward at the borders so it is always full (NATTEN semantics, see
   :mod:`attnplug.methods.neighborhood`), so each token keeps the receptive field the model was trained with.
2. **Cross-attention override with caching**: a second, *full-attention* branch runs the same denoiser with dense
   self-attention; its cross-attention (text -> video) outputs replace those of the windowed branch layer by layer,
   which restores global semantic consistency. The full branch runs only every ``refresh_every`` steps; in between
   the windowed branch reuses the cached cross-attention outputs (FreeSwim's cache: ">2x faster than no cache").

How it fits attnplug. A method only sees one module's (q, k, v); the dual path needs two things beyond that:

- *cross-attention calls*: :meth:`FreeSwimMethod.cross_attention` implements the wrapper's cross-attention hook
  (:meth:`AttentionMethod.cross_attention`: returns the override, or None for the stock call).
- *two denoiser passes on refresh steps*: :func:`enable_dual_path` wraps the denoiser's ``forward``: on a refresh step
  it first runs the full branch (``mode = "full"``: dense self-attention, cross-attention outputs cached per layer
  and per guidance pass), then the windowed branch (``mode = "window"``) whose cross-attention outputs are replaced by
  the cache. This equals FreeSwim's batch-doubled formulation: its full branch never reads the windowed one.

Differences from the reference code (documented choices): every guidance pass of a step (cond and uncond when the
pipeline calls the denoiser twice, or the joint CFG batch) gets its own full-branch cache, where FreeSwim overrides
only the conditional pass; joint-attention families (CogVideoX, HunyuanVideo, Flux, SD3) have no separate
cross-attention, so only the windowed self-attention applies there (text tokens stay global); FreeSwim's entropy
scale tweak of the softmax is not applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._logging import log_once
from ..config import MethodConfig, help_field
from ..layout import TokenLayout
from ..processors.wrapper import AttnplugProcessor
from .base import AttentionMethod, CallInfo
from .neighborhood import NEIGHBORHOOD_BACKENDS, NeighborhoodConfig, _int_triple

logger = logging.getLogger(__name__)

MODES = ("window", "full")


@dataclass(frozen=True)
class FreeSwimConfig(MethodConfig):
    """FreeSwim: inward sliding-window self-attention sized to the training resolution + full-branch cross-attention
    override, refreshed every ``refresh_every`` steps (``attnplug.apply`` sets up the dual path)."""

    name: ClassVar[str] = "freeswim"
    train_grid: tuple = help_field(
        (30, 52), "Token grid (height, width) or (frames, height, width) of the training resolution (latent / patch; "
        "Wan 2.1 480p: (30, 52)); the window is this size, rounded up to odd."
    )
    refresh_every: int = help_field(
        2, "Run the full-attention branch every this many steps and reuse its cross-attention outputs in between "
        "(1 = every step, FreeSwim's no-cache variant)."
    )
    override_cross_attention: bool = help_field(
        True, "Replace the windowed branch's cross-attention outputs by the full branch's (the dual path)."
    )
    backend: str = help_field("auto", "Neighbourhood backend: auto, tiles, triton, torch or reference.")

    def __post_init__(self):
        grid = self.train_grid
        if not isinstance(grid, (tuple, list)) or len(grid) not in (2, 3):
            raise ValueError(
                "FreeSwimConfig.train_grid must be (height, width) or (frames, height, width) in tokens, "
                f"got {grid!r}."
            )
        _int_triple(tuple(grid), "train_grid", "FreeSwimConfig")
        object.__setattr__(self, "train_grid", tuple(grid))
        r = self.refresh_every
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"FreeSwimConfig.refresh_every must be an int >= 1, got {r!r}.")
        if self.backend not in NEIGHBORHOOD_BACKENDS:
            raise ValueError(f"FreeSwimConfig.backend must be one of {NEIGHBORHOOD_BACKENDS}, got {self.backend!r}.")

    @property
    def window(self) -> NeighborhoodConfig:
        """The windowed branch's neighbourhood config (inward sliding window of the training grid)."""
        return NeighborhoodConfig.from_training_resolution(self.train_grid, backend=self.backend)

    def build(self) -> FreeSwimMethod:
        return FreeSwimMethod(self)


class FreeSwimMethod(AttentionMethod):
    """Self-attention: windowed (``mode == "window"``) or dense (``mode == "full"``); cross-attention: see
    :meth:`cross_attention`. ``(B, H, N, D)`` in and out."""

    def __init__(self, config: FreeSwimConfig | None = None):
        self.config = config or FreeSwimConfig()
        self.window = self.config.window.build()
        self.mode = "window"
        self.pass_index = 0  # guidance pass within the current step (separate cache per pass)
        self.cache: dict[tuple[int, str], torch.Tensor] = {}
        self.cache_step: dict[int, int] = {}  # pass -> step at which its cache was filled
        self.dual_path = False  # set by enable_dual_path
        self._forward = None

    def attach(self, model: torch.nn.Module) -> None:
        if self.config.override_cross_attention:
            enable_dual_path(model)

    def detach(self, model: torch.nn.Module) -> None:
        disable_dual_path(model)

    def __call__(self, q, k, v, layout: TokenLayout, mask=None, info: CallInfo | None = None):
        if mask is not None:
            return None
        if self.mode == "full":
            return F.scaled_dot_product_attention(q, k, v, scale=info.scale if info is not None else None)
        if not self.dual_path and self.config.override_cross_attention:
            log_once(logger, logging.WARNING, "FreeSwim: only the windowed self-attention is active; use "
                     "attnplug.apply(...) for the full-branch cross-attention override.")
        return self.window(q, k, v, layout, None, info)

    # -- the dual path ---------------------------------------------------------------------------------------------
    def needs_refresh(self, step: int) -> bool:
        """Whether the full branch must run before the windowed one at ``step`` for the current guidance pass."""
        if not self.config.override_cross_attention:
            return False
        last = self.cache_step.get(self.pass_index)
        return last is None or step < 0 or step < last or step - last >= self.config.refresh_every

    def cross_attention(self, q, k, v, mask, info: CallInfo) -> torch.Tensor | None:
        """The cross-attention hook: ``q (B, H, Nq, D)``, ``k, v (B, H, Nk, D)``, SDPA ``mask`` -> output or None.

        Full branch: dense cross-attention, cached for (guidance pass, layer). Windowed branch: the cached output of
        the same layer (None, i.e. the stock call, when there is none or its shape differs).
        """
        key = (self.pass_index, info.layer_name)
        if self.mode == "full":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=info.scale)
            self.cache[key] = out.detach()
            return out
        if not self.config.override_cross_attention:
            return None
        cached = self.cache.get(key)
        if cached is None or cached.shape != q.shape[:3] + (v.shape[-1],):
            return None
        return cached

    def reset(self) -> None:
        self.cache.clear()
        self.cache_step.clear()
        self.mode, self.pass_index = "window", 0


class FreeSwimProcessor(AttnplugProcessor):
    """An :class:`AttnplugProcessor` for a FreeSwim config. Standalone: ``model.set_attn_processor(
    FreeSwimProcessor(cfg))`` gives the windowed self-attention (the dual path needs :func:`attnplug.apply`)."""

    def __init__(self, config: FreeSwimConfig | FreeSwimMethod | None = None, *, layout: TokenLayout | None = None,
                 **kwargs):
        config = config if config is not None else FreeSwimConfig()
        if not isinstance(config, (FreeSwimConfig, FreeSwimMethod)):
            raise TypeError(f"FreeSwimProcessor needs a FreeSwimConfig, got {type(config).__name__}.")
        super().__init__(config, layout=layout, **kwargs)


def _applied(model):
    applied = model.__dict__.get("_attnplug")
    if applied is None or not isinstance(applied.runtime.method, FreeSwimMethod):
        raise ValueError(
            f"{type(model).__name__} has no FreeSwim method applied: call attnplug.apply(model, FreeSwimConfig(...)) "
            "first, or use apply_freeswim(...)."
        )
    return applied


def enable_dual_path(target):
    """Turn on FreeSwim's dual path on a pipeline/denoiser patched with a FreeSwim config (``attnplug.apply`` does
    this itself when ``override_cross_attention`` is on): the denoiser's ``forward`` runs the full branch first on
    refresh steps; cross-attention calls reach :meth:`FreeSwimMethod.cross_attention` through the wrapper's hook.
    Undone by :func:`disable_dual_path` and by ``attnplug.remove``. Returns ``target``."""
    from ..plugin import resolve_denoiser

    model, _ = resolve_denoiser(target)
    applied = _applied(model)
    method: FreeSwimMethod = applied.runtime.method
    if method.dual_path:
        return target
    state = applied.runtime.state
    previous = model.__dict__.get("forward")  # e.g. accelerate's offload hook
    original = model.forward
    last = {"step": None}

    def forward(*args, **kwargs):
        step = state.step if state is not None else -1
        method.pass_index = 0 if last["step"] != step else method.pass_index + 1
        last["step"] = step
        if method.needs_refresh(step) and applied.runtime.schedule.step_active(step, applied.runtime.step()[1]):
            method.mode = "full"
            try:
                original(*args, **kwargs)  # full branch: fills the cross-attention cache
            finally:
                method.mode = "window"
            method.cache_step[method.pass_index] = step
        return original(*args, **kwargs)

    model.forward = forward
    method.dual_path = True
    method._forward = (forward, previous)
    logger.info("attnplug: FreeSwim dual path on %s (refresh every %d steps)", type(model).__name__,
                method.config.refresh_every)
    return target


def disable_dual_path(target):
    """Undo :func:`enable_dual_path` (the forward wrapper); a no-op when it is not enabled. Returns ``target``."""
    from ..plugin import resolve_denoiser

    model, _ = resolve_denoiser(target)
    applied = model.__dict__.get("_attnplug")
    if applied is None or not isinstance(applied.runtime.method, FreeSwimMethod):
        return target
    method = applied.runtime.method
    if method.dual_path:
        ours, previous = method._forward
        if model.__dict__.get("forward") is ours:
            if previous is None:
                del model.__dict__["forward"]
            else:
                model.forward = previous
        method.dual_path = False
    method.reset()
    return target


def apply_freeswim(target, config: FreeSwimConfig | None = None, **apply_kwargs):
    """Same as ``attnplug.apply(target, config or FreeSwimConfig(), **apply_kwargs)`` (kept for explicitness).
    Returns ``target``."""
    from ..plugin import apply

    return apply(target, config if config is not None else FreeSwimConfig(), **apply_kwargs)


def remove_freeswim(target):
    """Same as ``attnplug.remove(target)``. Returns ``target``."""
    from ..plugin import remove

    return remove(target)
