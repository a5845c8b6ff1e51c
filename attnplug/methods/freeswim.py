"""FreeSwim-style dual path for high-resolution generation (arXiv 2511.14712, training-free).

Two ideas, both above the training resolution:

1. **Inward sliding-window self-attention**: every query attends to a window the size of the training-resolution
   token grid, shifted inward at the borders so it is always full (NATTEN semantics, see
   :mod:`attnplug.methods.neighborhood`), so each token keeps the receptive field the model was trained with.
2. **Cross-attention override with caching**: a second, *full-attention* branch runs the same denoiser with stock
   self-attention; its cross-attention (text -> image) outputs replace those of the windowed branch layer by layer,
   which restores global semantic consistency. The full branch runs only every ``refresh_every`` steps; in between
   the windowed branch reuses the cached cross-attention outputs (FreeSwim's cache).

The training grid. ``FreeSwimConfig.train_grid`` when given, in the units of the denoiser's input token grid
(``CallInfo.latent_grid``: latent / patch for DiTs, the latent for U-Nets) and scaled with each layer's grid (U-Net
levels); otherwise ``CallInfo.train_grid``, which the layout layer fills from the model's config at the call's level.
The window is that grid rounded up to odd (``2 * (n // 2) + 1``). A call whose window covers its whole token grid (at
or below the training resolution) is handed back to stock attention (reason ``window-covers-grid``), and so is a call
whose training grid is unknown (``train-grid-unknown``, with a warning).
A boolean key-padding mask ``(B|1, 1, 1, N)`` (HunyuanVideo's padded prompt) excludes the padded keys from the
window, as in neighbourhood attention; any other mask hands the call back (``attention-mask``).

How it fits attnplug. A method sees one module's ``(q, k, v)``; the dual path needs two things beyond that:

- *cross-attention calls*: :meth:`FreeSwimMethod.cross_attention` (the wrapper's cross-attention hook, see
  :meth:`AttentionMethod.cross_attention`) caches them in the full branch and returns the cache in the windowed one.
- *two denoiser passes on refresh steps*: :meth:`FreeSwimMethod.model_hook` returns a :class:`FreeSwimHook`, a
  diffusers ``ModelHook`` the plugin registers on the denoiser. On a refresh step it runs the full branch first
  (self-attention handed back to stock, cross-attention outputs cached per layer and guidance pass), then the
  windowed branch. If the full branch found no call the windowed branch would window (everything covered, or outside
  the schedule), its output *is* the windowed branch's output: the hook returns it and skips the second pass, so a
  model at its training resolution costs one pass. This equals FreeSwim's batch-doubled formulation (its full branch
  never reads the windowed one).

Differences from the reference code (documented choices): every guidance pass of a step (cond and uncond when the
pipeline calls the denoiser twice, or the joint CFG batch) gets its own full-branch cache, where FreeSwim overrides
only the conditional pass; joint-attention families (CogVideoX, HunyuanVideo, Flux, SD3) have no separate
cross-attention, so only the windowed self-attention applies there (text tokens stay global) and the full branch is
dropped after the first one finds no cross-attention; FreeSwim's entropy scale tweak of the softmax is not applied.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.hooks import ModelHook

from .._cache import BoundedCache
from .._logging import log_once
from .._steps import DenoisingSteps, TimestepInput, timestep_input
from ..layout import TokenLayout
from ..reasons import register
from .base import AttentionMethod, CallInfo
from .freeswim_config import FreeSwimConfig  # noqa: F401 - re-exported
from .neighborhood import NeighborhoodConfig, NeighborhoodMethod
from .patterns.base import key_padding

logger = logging.getLogger(__name__)
register("train-grid-unknown", "the model's training grid is unknown, so the window cannot be sized")
register("freeswim-full-branch", "FreeSwim's full-attention branch: self-attention stays stock on purpose")

#: Guidance passes per step with their own cross-attention cache; further passes of one step share the last slot.
MAX_PASSES = 4
_MAX_WINDOW_METHODS = 16  # distinct window sizes kept (one per attention level and resolution in practice)


def window_for(train_grid: tuple, grid: tuple[int, int, int]) -> tuple[int | None, int, int] | None:
    """The FreeSwim window ``(frames or None, height, width)`` for a call on ``grid`` given the training grid at that
    call's level, or None when it covers the whole grid (the call is then dense attention)."""
    window = tuple(None if t is None else 2 * (t // 2) + 1 for t in train_grid)
    if all(w is None or w >= n for w, n in zip(window, grid)):
        return None
    return window


def key_mask_4d(mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """A prompt mask as SDPA takes it: a 2-D ``(B, Nk)`` mask (boolean or additive) for ``q (B, H, Nq, D)`` and
    ``k (B, H, Nk, D)`` becomes ``(B, 1, 1, Nk)``, as diffusers' native attention backend reshapes it before SDPA
    (Kandinsky 6 hands ``dispatch_attention_fn`` its ``(B, N_text)`` mask); any other mask unchanged."""
    if mask is not None and mask.dim() == 2 and mask.shape[0] == q.shape[0] and mask.shape[1] == k.shape[-2]:
        return mask[:, None, None, :]
    return mask


@dataclass
class _RunState:
    """Everything FreeSwim remembers during a run (cleared by :meth:`FreeSwimMethod.reset`)."""

    branch: str = "window"  # "full" while the hook runs the full branch
    pass_index: int = 0  # guidance pass of the current denoiser call (capped at MAX_PASSES - 1)
    # (pass, layer, call within the layer) -> cross output: a processor may make several attention calls per layer
    # (IP-adapter: text, then image prompt)
    cache: dict[tuple[int, str, int], torch.Tensor] = field(default_factory=dict)
    calls_in_layer: Counter = field(default_factory=Counter)  # layer -> cross calls so far in this denoiser pass
    cache_step: dict[int, int] = field(default_factory=dict)  # pass -> the step its cache was filled at
    would_window: int = 0  # full branch: self-attention calls the windowed branch would window
    cross_seen: int = 0  # full branch: cross-attention calls cached
    no_cross: bool = False  # a full branch found no cross-attention: the dual path has nothing to override
    counts: Counter = field(default_factory=Counter)


class FreeSwimMethod(AttentionMethod):
    """Self-attention: inward sliding window sized to the training grid (windowed branch) or handed back to stock
    (full branch); cross-attention: see :meth:`cross_attention`. ``(B, H, N, D)`` in and out.

    One denoising run at a time per method instance: the run state (branch, caches, counters) lives in one
    :class:`_RunState`, cleared by :meth:`reset`."""

    #: Boolean key-padding masks are honoured (padded keys excluded, see :meth:`__call__`); other masks handed back.
    supports_mask = True

    def __init__(self, config: FreeSwimConfig | None = None):
        self.config = config or FreeSwimConfig()
        self._state = _RunState()
        self._hooked = 0  # number of denoisers whose FreeSwimHook is registered
        self._windows = BoundedCache(_MAX_WINDOW_METHODS)  # window -> NeighborhoodMethod

    # -- self-attention ----------------------------------------------------------------------------------------
    def train_grid_at(self, layout: TokenLayout, info: CallInfo) -> tuple[int | None, int, int] | None:
        """The training grid ``(frames or None, height, width)`` at this call's grid, or None when unknown.

        A configured grid is scaled by ``layout.grid / info.latent_grid`` (U-Net levels; 1 for DiTs). The model's
        (``info.train_grid``) is already at the call's level; its frames are not windowed."""
        if self.config.train_grid is not None:
            tf, th, tw = self.config.train_grid
            if info.latent_grid is not None:
                _, lh, lw = info.latent_grid
                th, tw = -(-th * layout.height // lh), -(-tw * layout.width // lw)
            return tf, th, tw
        if info.train_grid is not None:
            return None, info.train_grid[1], info.train_grid[2]
        return None

    def _window_method(self, window: tuple) -> NeighborhoodMethod:
        return self._windows.get_or_build(
            window, lambda: NeighborhoodConfig(kernel_size=window, backend=self.config.backend).build()
        )

    def __call__(self, q, k, v, layout: TokenLayout, mask=None, info: CallInfo | None = None):
        """``q, k, v (B, H, N, D)`` laid out as ``layout`` -> windowed output, or None to hand the call back.

        A boolean key-padding ``mask (B|1, 1, 1, N)`` (HunyuanVideo's padded prompt) is honoured as neighbourhood
        attention honours it: the padded keys are excluded, every other key is unchanged. Any other mask is handed
        back (``attention-mask``)."""
        if mask is not None and key_padding(mask, q.shape[0], k.shape[-2]) is None:
            return self.hand_back("attention-mask")
        info = info or CallInfo()
        st = self._state
        train = self.train_grid_at(layout, info)
        if train is None:
            st.counts["self: training grid unknown"] += 1
            log_once(logger, logging.WARNING, "FreeSwim: the model's training grid is unknown, so self-attention "
                     "stays stock; give FreeSwimConfig(train_grid=(height, width)) in tokens.")
            return self.hand_back("train-grid-unknown")
        window = window_for(train, layout.grid)
        if st.branch == "full" and window is not None:
            st.would_window += 1
            st.counts["self: full branch (stock)"] += 1
            return self.hand_back("freeswim-full-branch")
        if window is None:  # at or below the training size; in the full branch too, so the reason says why
            st.counts["self: window covers the grid (stock)"] += 1
            log_once(logger, logging.INFO, f"FreeSwim: the training-size window covers the token grid {layout.grid} "
                     f"(training grid {train[1:]} at this level), so that call runs stock attention.")
            return self.hand_back("window-covers-grid")
        if not self._hooked and self.config.override_cross_attention:
            log_once(logger, logging.WARNING, "FreeSwim: only the windowed self-attention is active; use "
                     "attnplug.apply(...) for the full-branch cross-attention override.")
        st.counts["self: windowed"] += 1
        return self._window_method(window)(q, k, v, layout, mask, info)

    # -- cross-attention ---------------------------------------------------------------------------------------
    def cross_attention(self, q, k, v, mask, info: CallInfo) -> torch.Tensor | None:
        """The cross-attention hook: ``q (B, H, Nq, D)``, ``k, v (B, H, Nk, D)``, ``mask`` (as the processor passed it:
        SDPA's forms, or a 2-D ``(B, Nk)`` prompt mask, see :func:`key_mask_4d`) -> output or None.

        Full branch: stock cross-attention, cached for (guidance pass, layer, call within the layer). Windowed branch:
        the cached output of the same call (None, i.e. the stock call, when there is none or its shape differs).
        """
        st = self._state
        if not self.config.override_cross_attention:
            return None
        ordinal = st.calls_in_layer[info.layer_name]
        st.calls_in_layer[info.layer_name] = ordinal + 1
        key = (st.pass_index, info.layer_name, ordinal)
        if st.branch == "full":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask_4d(mask, q, k), scale=info.scale)
            st.cache[key] = out.detach()
            st.cross_seen += 1
            st.counts["cross: cached by the full branch"] += 1
            return out
        cached = st.cache.get(key)
        if cached is None or cached.shape != q.shape[:3] + (v.shape[-1],):
            return None
        st.counts["cross: overridden"] += 1
        return cached

    # -- the dual path (driven by FreeSwimHook) ----------------------------------------------------------------
    def _needs_full_branch(self, step: int) -> bool:
        st = self._state
        if not self.config.override_cross_attention or st.no_cross:
            return False
        last = st.cache_step.get(st.pass_index)
        return last is None or last > step or step - last >= self.config.refresh_every

    def run(self, forward, steps: DenoisingSteps, args: tuple, kwargs: dict):
        """One denoiser call ``forward(*args, **kwargs)`` through the dual path at the position ``steps`` says (the
        step tracker, already advanced for this call): the full branch first on refresh steps, then (unless the full
        branch found nothing to window) the windowed branch. Returns the output."""
        st = self._state
        st.pass_index = min(steps.pass_index, MAX_PASSES - 1)
        if not self._needs_full_branch(steps.step):
            return self._denoiser_pass(forward, args, kwargs)
        st.branch, st.would_window, st.cross_seen = "full", 0, 0
        try:
            out = self._denoiser_pass(forward, args, kwargs)
        finally:
            st.branch = "window"
        st.counts["full branches"] += 1
        st.cache_step[st.pass_index] = steps.step
        if st.cross_seen == 0 and st.would_window:
            st.no_cross = True
            log_once(logger, logging.INFO, "FreeSwim: the model has no separate cross-attention to override; "
                     "only the windowed self-attention applies (the full branch is not run again).")
        if st.would_window == 0:
            # Nothing to window: the windowed branch would give this very output (stock self-attention, its own
            # cross-attention outputs), so it is not run, and no cached output overrides a later step.
            for key in [key for key in st.cache if key[0] == st.pass_index]:
                del st.cache[key]
            st.counts["windowed branches skipped (nothing to window)"] += 1
            return out
        del out
        return self._denoiser_pass(forward, args, kwargs)

    def _denoiser_pass(self, forward, args: tuple, kwargs: dict):
        self._state.calls_in_layer.clear()  # cross calls are numbered per layer within one pass
        return forward(*args, **kwargs)

    def model_hook(self) -> FreeSwimHook | None:
        """The dual-path hook for the denoiser (None when ``override_cross_attention`` is off)."""
        return FreeSwimHook(self) if self.config.override_cross_attention else None

    def reset(self) -> None:
        """Forget the run: caches, counters and the report."""
        self._state = _RunState()

    def report(self) -> dict[str, Any]:
        """What ran during this run: self-attention calls windowed / handed back by cause, cross-attention calls cached
        and overridden, full branches run, windowed branches skipped."""
        return dict(self._state.counts)


class FreeSwimHook(ModelHook):
    """diffusers ``ModelHook`` on the denoiser that runs FreeSwim's full branch before the windowed one on refresh
    steps. The step and guidance pass come from the plugin's tracker (:meth:`bind_steps`); a hook registered without
    the plugin follows the timestep itself with the same tracker class."""

    def __init__(self, method: FreeSwimMethod):
        super().__init__()
        self.method = method
        self.steps = DenoisingSteps()
        self._own_steps = True
        self._timestep = TimestepInput()

    def bind_steps(self, steps: DenoisingSteps) -> None:
        """Read ``steps`` (kept current by whoever owns it) instead of following the timestep here."""
        self.steps, self._own_steps = steps, False

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self._timestep = timestep_input(module)
        if self._own_steps:
            self.steps.rises = self._timestep.rises
        self.method._hooked += 1
        return module

    def deinitalize_hook(self, module: torch.nn.Module) -> torch.nn.Module:  # diffusers' spelling
        self.method._hooked = max(0, self.method._hooked - 1)
        self.method.reset()
        return module

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.method.reset()
        if self._own_steps:
            self.steps.reset()
        return module

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        if self._own_steps and self.steps.observe(self._timestep.read(args, kwargs)):
            self.method.reset()
        return self.method.run(self.fn_ref.original_forward, self.steps, args, kwargs)
