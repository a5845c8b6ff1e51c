"""Shifted-window attention whose shift changes with the denoising step (HiDiffusion's MSW-MSA, arXiv 2311.17528).

The ``(frames, height, width)`` grid is cut into non-overlapping windows (Swin-style) and attention runs inside each
window (one batched SDPA call over all windows). Before partitioning, the grid is rolled cyclically by a shift that
changes from step to step, so window borders move and information crosses them over the denoising run; tokens
wrapped around an edge share a window with the opposite edge, as in HiDiffusion (no Swin re-masking).

Window rule (per dimension of length ``L``): ``w = window_size`` if given, else ``ceil(L * window_fraction)``, cut to
``L``; there are ``n = ceil(L / w)`` windows. **Padding rule**: when ``w`` does not divide ``L`` the rolled grid is
padded at the end to ``n * w``; padded positions are masked out as keys and their outputs dropped, so the last window
of that dimension is smaller (HiDiffusion instead resizes the feature map, which changes the features).

Shift (per dimension): ``(w // num_shifts) * i`` with ``i`` = ``step % num_shifts`` (``shift="cycle"``), drawn from
``{0, ..., num_shifts - 1}`` by a generator seeded with the step (``"random"``, HiDiffusion's rule, reproducible), or 0
(``"none"``). HiDiffusion: 2 x 2 windows (``window_fraction=0.5``), 4 shifts of a quarter window.

By default only the highest-resolution U-Net blocks use windows (the layer's grid equals ``CallInfo.latent_grid``);
calls at lower resolutions are handed back to dense attention. In DiTs every layer is at full resolution.

Text tokens of joint attention stay global: text queries attend to every key, image queries to their window plus all
text keys.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._logging import log_once
from ..config import MethodConfig, help_field
from ..layout import TokenLayout
from ..processors.wrapper import AttnplugProcessor
from .base import AttentionMethod, CallInfo

logger = logging.getLogger(__name__)

DIM_NAMES = ("frames", "height", "width")
SHIFT_MODES = ("cycle", "random", "none")
LEVELS = ("highest", "all")


def _triple(value, name: str, kind: type, fill) -> tuple:
    owner = "WindowConfig"
    if isinstance(value, bool) or (kind is int and isinstance(value, float)):
        raise TypeError(f"{owner}.{name} must be a {kind.__name__} or a tuple of them, got {value!r}.")
    if isinstance(value, (int, float)):
        out = (fill, value, value)
    elif isinstance(value, (tuple, list)) and len(value) in (2, 3):
        out = tuple(value) if len(value) == 3 else (fill, *value)
    else:
        raise ValueError(
            f"{owner}.{name} must be a {kind.__name__}, or a tuple of 2 (height, width) or 3 (frames, height, width), "
            f"got {value!r}."
        )
    for dim, v in enumerate(out):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
            raise TypeError(f"{owner}.{name} entries must be {kind.__name__}s, got {value!r}.")
        if kind is float and not 0.0 < v <= 1.0:
            raise ValueError(f"{owner}.{name} for {DIM_NAMES[dim]} must be in (0, 1], got {v} (in {value!r}).")
        if kind is int and v < 1:
            raise ValueError(f"{owner}.{name} for {DIM_NAMES[dim]} must be >= 1, got {v} (in {value!r}).")
    return out


@dataclass(frozen=True)
class WindowPlan:
    """Windows of one grid: per dimension window size, number of windows, padding and shift (all (f, h, w))."""

    grid: tuple[int, int, int]
    window: tuple[int, int, int]
    shift: tuple[int, int, int]

    @property
    def counts(self) -> tuple[int, int, int]:
        return tuple(-(-n // w) for n, w in zip(self.grid, self.window))

    @property
    def padding(self) -> tuple[int, int, int]:
        return tuple(c * w - n for n, w, c in zip(self.grid, self.window, self.counts))

    @property
    def is_dense(self) -> bool:
        return all(w >= n for n, w in zip(self.grid, self.window))


def window_plan(grid, window_size=None, window_fraction=(1.0, 0.5, 0.5), shift_index: int = 0,
                num_shifts: int = 4) -> WindowPlan:
    """Window sizes and shifts for ``grid`` (see the module docstring for the rule)."""
    if window_size is not None:
        sizes = _triple(window_size, "window_size", int, max(grid[0], 1))
    else:
        fr = _triple(window_fraction, "window_fraction", float, 1.0)
        sizes = tuple(math.ceil(n * f) for n, f in zip(grid, fr))
    window = tuple(max(1, min(w, n)) for w, n in zip(sizes, grid))
    shift = tuple(0 if w >= n else (w // num_shifts) * shift_index for w, n in zip(window, grid))
    return WindowPlan(tuple(grid), window, shift)


def _partition(x: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
    """``(B, H, F*Hh*W, D)`` image tokens -> ``(B, H, num_windows, window_tokens, D)`` (rolled, padded)."""
    b, h, _, d = x.shape
    f, hh, w = plan.grid
    (wf, wy, wx), (nf, ny, nx), (pf, py, px) = plan.window, plan.counts, plan.padding
    x = x.reshape(b, h, f, hh, w, d)
    if any(plan.shift):
        x = torch.roll(x, shifts=tuple(-s for s in plan.shift), dims=(2, 3, 4))
    if pf or py or px:
        x = F.pad(x, (0, 0, 0, px, 0, py, 0, pf))
    x = x.reshape(b, h, nf, wf, ny, wy, nx, wx, d).permute(0, 1, 2, 4, 6, 3, 5, 7, 8)
    return x.reshape(b, h, nf * ny * nx, wf * wy * wx, d)


def _reverse(x: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
    """Inverse of :func:`_partition`: ``(B, H, num_windows, window_tokens, D)`` -> ``(B, H, F*Hh*W, D)``."""
    b, h, _, _, d = x.shape
    f, hh, w = plan.grid
    (wf, wy, wx), (nf, ny, nx) = plan.window, plan.counts
    x = x.reshape(b, h, nf, ny, nx, wf, wy, wx, d).permute(0, 1, 2, 5, 3, 6, 4, 7, 8)
    x = x.reshape(b, h, nf * wf, ny * wy, nx * wx, d)[:, :, :f, :hh, :w]
    if any(plan.shift):
        x = torch.roll(x, shifts=plan.shift, dims=(2, 3, 4))
    return x.reshape(b, h, f * hh * w, d)


def _key_valid(plan: WindowPlan, device) -> torch.Tensor | None:
    """``(num_windows, window_tokens)`` bool: which window positions are real tokens (None when nothing is padded)."""
    if not any(plan.padding):
        return None
    ones = torch.ones(1, 1, plan.grid[0] * plan.grid[1] * plan.grid[2], 1, device=device)
    return _partition(ones, WindowPlan(plan.grid, plan.window, (0, 0, 0)))[0, 0, :, :, 0] > 0


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: TokenLayout,
    plan: WindowPlan,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention inside the (shifted, padded) windows of ``plan``; text tokens global.

    Args:
        q, k, v: ``(B, H, N, D)``, ``N = layout.num_tokens``.
        layout: token layout; ``plan.grid`` must equal ``layout.grid``.
        plan: from :func:`window_plan`.

    Returns:
        ``(B, H, N, D)``.
    """
    layout.check(q.shape[-2])
    if tuple(plan.grid) != layout.grid:
        raise ValueError(f"window plan grid {plan.grid} does not match the layout grid {layout.grid}.")
    if plan.is_dense:
        log_once(logger, logging.DEBUG, f"window: window covers the grid {layout.grid}; plain SDPA")
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    b, h, _, d = q.shape
    qi, qt = layout.split(q)
    ki, kt = layout.split(k)
    vi, vt = layout.split(v)
    qw, kw, vw = _partition(qi, plan), _partition(ki, plan), _partition(vi, plan)
    nw, s = qw.shape[2], qw.shape[3]
    valid = _key_valid(plan, q.device)
    t = layout.text_tokens
    if t:
        kw = torch.cat([kw, kt[:, :, None].expand(b, h, nw, t, d)], dim=3)
        vw = torch.cat([vw, vt[:, :, None].expand(b, h, nw, t, d)], dim=3)
        if valid is not None:
            valid = torch.cat([valid, torch.ones(nw, t, dtype=torch.bool, device=q.device)], dim=1)
    mask = None if valid is None else valid[:, None, :]  # (nW, 1, S[+T]) over (B*H, nW, S, S[+T])
    out = F.scaled_dot_product_attention(
        qw.reshape(b * h, nw, s, d), kw.reshape(b * h, nw, -1, d), vw.reshape(b * h, nw, -1, d), attn_mask=mask,
        scale=scale,
    )
    out_img = _reverse(out.reshape(b, h, nw, s, d), plan)
    if not t:
        return out_img
    out_txt = F.scaled_dot_product_attention(qt, k, v, scale=scale)
    return layout.merge(out_img, out_txt)


@dataclass(frozen=True)
class WindowConfig(MethodConfig):
    """Shifted-window attention with a step-dependent shift (HiDiffusion MSW-MSA), on the highest-resolution layers.

    Sizes are a number (height and width) or a tuple of 2 (height, width) or 3 (frames, height, width); frames are
    not windowed unless given.
    """

    name: ClassVar[str] = "window"
    window_fraction: float | tuple = help_field(
        0.5, "Window side as a fraction of the grid side (0.5 = 2 x 2 windows, HiDiffusion's default)."
    )
    window_size: int | tuple | None = help_field(
        None, "Window size in tokens (overrides window_fraction); windows that don't divide the grid are padded."
    )
    shift: str = help_field(
        "cycle", "Shift per step: 'cycle' (step % num_shifts), 'random' (seeded by the step, HiDiffusion) or 'none'."
    )
    num_shifts: int = help_field(4, "Number of shift positions: the shift is a multiple of window // num_shifts.")
    seed: int = help_field(0, "Seed of the 'random' shift sequence.")
    levels: str = help_field(
        "highest", "'highest': only layers at the denoiser's full token grid (top U-Net blocks); 'all': every layer."
    )

    def __post_init__(self):
        if self.window_size is not None:
            _triple(self.window_size, "window_size", int, 1)
        else:
            _triple(self.window_fraction, "window_fraction", float, 1.0)
        if self.shift not in SHIFT_MODES:
            raise ValueError(f"WindowConfig.shift must be one of {SHIFT_MODES}, got {self.shift!r}.")
        if isinstance(self.num_shifts, bool) or not isinstance(self.num_shifts, int) or self.num_shifts < 1:
            raise ValueError(f"WindowConfig.num_shifts must be an int >= 1, got {self.num_shifts!r}.")
        if self.levels not in LEVELS:
            raise ValueError(f"WindowConfig.levels must be one of {LEVELS}, got {self.levels!r}.")
        for name in ("window_fraction", "window_size"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    def shift_index(self, step: int) -> int:
        """The shift position used at denoising step ``step`` (-1 = unknown -> 0)."""
        if self.shift == "none" or step < 0:
            return 0
        if self.shift == "cycle":
            return step % self.num_shifts
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return int(torch.randint(self.num_shifts, (1,), generator=gen))

    def plan(self, layout: TokenLayout, step: int = -1) -> WindowPlan:
        """Windows for ``layout`` at ``step``."""
        return window_plan(layout.grid, self.window_size, self.window_fraction, self.shift_index(step),
                           self.num_shifts)

    def build(self) -> WindowMethod:
        return WindowMethod(self)


class WindowMethod(AttentionMethod):
    """Shifted-window attention; ``(B, H, N, D)`` in and out; None (dense) below the full-resolution grid."""

    def __init__(self, config: WindowConfig | None = None):
        self.config = config or WindowConfig()

    def __call__(self, q, k, v, layout: TokenLayout, mask=None, info: CallInfo | None = None):
        if mask is not None:
            return None
        if self.config.levels == "highest" and info is not None and info.latent_grid is not None:
            if tuple(layout.grid[1:]) != tuple(info.latent_grid[1:]):
                return None
        plan = self.config.plan(layout, info.step if info is not None else -1)
        return window_attention(q, k, v, layout, plan, info.scale if info is not None else None)


class WindowProcessor(AttnplugProcessor):
    """Standalone processor: ``model.set_attn_processor(WindowProcessor(WindowConfig(...)))`` (square grid inferred
    from the token count unless ``layout`` is given; without a denoising-step tracker the shift stays 0)."""

    def __init__(self, config: WindowConfig | None = None, *, layout: TokenLayout | None = None, **kwargs):
        config = config if config is not None else WindowConfig()
        if not isinstance(config, WindowConfig):
            raise TypeError(f"WindowProcessor needs a WindowConfig, got {type(config).__name__}.")
        super().__init__(config, layout=layout, **kwargs)
