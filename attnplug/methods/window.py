"""Shifted-window attention whose shift changes with the denoising step (HiDiffusion's MSW-MSA, arXiv 2311.17528).

The ``(frames, height, width)`` grid is cut into non-overlapping windows (Swin-style) and attention runs inside each
window; before partitioning the grid is rolled cyclically by a shift that changes from step to step, so window
borders move and information crosses them over the denoising run (tokens wrapped around an edge share a window with
the opposite edge, as in HiDiffusion). The partitioning kernel and its brute-force reference live in
:mod:`attnplug.kernels.window`; this module holds the config and the method (which layers, which shift).

Layers: ``max_level=0`` (default) windows only the highest-resolution *attention* level of the model
(``CallInfo.level == 0``: the top U-Net attention blocks, every DiT layer), as HiDiffusion does; coarser levels and
calls whose window covers the whole grid are handed back to stock attention.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from .._args import as_tuple
from .._logging import log_once
from ..config import MethodConfig, help_field
from ..kernels._cache import BoundedCache
from ..kernels.window import WindowPlan, shift_tables, shifted_window_attention, window_plan
from ..layout import TokenLayout
from .base import AttentionMethod, CallInfo

logger = logging.getLogger(__name__)

SHIFT_MODES = ("cycle", "random", "none")
#: The ``random`` shift sequence repeats after this many steps (the usual 1000 training timesteps bound a run).
RANDOM_PERIOD = 1000
_RANDOM_TABLES = BoundedCache(16)


@dataclass(frozen=True)
class WindowConfig(MethodConfig):
    """Shifted-window attention with a step-dependent shift (HiDiffusion MSW-MSA) on the highest-resolution
    attention level.

    Sizes are a number (height and width) or a tuple of 2 (height, width) or 3 (frames, height, width); frames are
    not windowed unless a 3-tuple is given.
    """

    name: ClassVar[str] = "window"
    window_fraction: float | tuple = help_field(
        0.5, "Window side as a fraction of the grid side, in (0, 1] (0.5 = 2 x 2 windows, HiDiffusion's default)."
    )
    window_size: int | tuple | None = help_field(
        None, "Window size in tokens (overrides window_fraction); windows that don't divide the grid are padded.",
        min=1,
    )
    shift: str = help_field(
        "cycle", "Shift per step: 'cycle' (step % num_shifts), 'random' (seeded by the step, HiDiffusion) or 'none'.",
        choices=SHIFT_MODES,
    )
    num_shifts: int = help_field(
        4, "Number of shift positions: the shift is a multiple of window // num_shifts.", min=1
    )
    seed: int = help_field(0, "Seed of the 'random' shift sequence.")
    max_level: int | None = help_field(
        0, "Window only attention levels 0..max_level (0 = the model's highest-resolution attention blocks, 1 = one "
        "2x downsampling below, ...); None: every level.", min=0,
    )

    def __post_init__(self):
        owner = type(self).__name__
        if self.window_size is not None:
            size = as_tuple(self.window_size, 3, "window_size", owner, spatial=2, fill=None, allow_none=True,
                            minimum=1)
            object.__setattr__(self, "window_size", size[1:] if size[0] is None else size)
        fraction = as_tuple(self.window_fraction, 3, "window_fraction", owner, kind=float, spatial=2, fill=1.0,
                            minimum=0.0, min_exclusive=True, maximum=1.0)
        if not isinstance(self.window_fraction, (int, float)):
            object.__setattr__(self, "window_fraction", fraction if len(self.window_fraction) == 3 else fraction[1:])
        for name in ("num_shifts", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{owner}.{name} must be an int, got {value!r}.")
        m = self.max_level
        if m is not None and (isinstance(m, bool) or not isinstance(m, int)):
            raise TypeError(f"{owner}.max_level must be an int >= 0 or None, got {m!r}.")
        super().__post_init__()

    def shift_index(self, step: int) -> int:
        """The shift position used at denoising step ``step`` (-1 = unknown -> 0). The ``random`` sequence repeats
        every :data:`RANDOM_PERIOD` steps."""
        if self.shift == "none" or step < 0:
            return 0
        if self.shift == "cycle":
            return step % self.num_shifts
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step % RANDOM_PERIOD)
        return int(torch.randint(self.num_shifts, (1,), generator=gen))

    def shift_index_tensor(self, step: torch.Tensor) -> torch.Tensor:
        """:meth:`shift_index` of a 0-d int64 ``step`` tensor, as a 0-d int64 tensor on its device (no host read)."""
        if self.shift == "none":
            return torch.zeros_like(step)
        if self.shift == "cycle":
            return step.clamp_min(0) % self.num_shifts
        table = _RANDOM_TABLES.get_or_build((self, str(step.device)), lambda: self._random_table(step.device))
        index = (step.clamp_min(0) % RANDOM_PERIOD).reshape(1)
        return torch.where(step < 0, 0, table.index_select(0, index).squeeze(0))  # not table[step]: a host read

    def _random_table(self, device: torch.device) -> torch.Tensor:
        """``(RANDOM_PERIOD,)`` int64: the ``random`` shift position of each step."""
        return torch.tensor([self.shift_index(step) for step in range(RANDOM_PERIOD)], device=device)

    def plan(self, layout: TokenLayout, step: int = -1) -> WindowPlan:
        """Windows for ``layout`` at ``step``."""
        return window_plan(layout.grid, self.window_size, self.window_fraction, self.shift_index(step),
                           self.num_shifts)

    def build(self) -> WindowMethod:
        return WindowMethod(self)


class WindowMethod(AttentionMethod):
    """Shifted-window attention on ``(B, H, N, D)`` self-attention calls. Stateless (safe to share between threads).

    Hands a call back (returns None) when its attention level is above ``max_level`` or when one window covers the
    whole grid (window attention would be dense attention)."""

    def __init__(self, config: WindowConfig | None = None):
        self.config = config or WindowConfig()

    def __call__(self, q, k, v, layout: TokenLayout, mask=None, info: CallInfo | None = None):
        """``q, k, v (B, H, N, D)`` laid out as ``layout`` -> ``(B, H, N, D)``, or None to hand the call back
        (reason codes ``attention-mask``, ``level-above-max-level``, ``window-covers-grid``)."""
        if mask is not None:
            return self.hand_back("attention-mask")
        info = info or CallInfo()
        if self.config.max_level is not None and info.level > self.config.max_level:
            return self.hand_back("level-above-max-level")
        plan = self.config.plan(layout)
        if plan.is_dense:
            log_once(logger, logging.DEBUG, f"window attention: the window {plan.window} covers the token grid "
                     f"{layout.grid} in {info.layer_name or 'a layer'}; stock attention there")
            return self.hand_back("window-covers-grid")
        tables = shift_tables(plan, self.config.num_shifts, q.device)
        return shifted_window_attention(q, k, v, layout, tables, self._shift(info, q.device), info.scale)

    def _shift(self, info: CallInfo, device: torch.device) -> int | torch.Tensor:
        """The call's shift position: from ``info.step_tensor`` when the step tracker gives one (a tensor, so a
        compiled graph serves every step), else from ``info.step``."""
        if info.step_tensor is None or self.config.shift == "none":
            return self.config.shift_index(info.step)
        step = info.step_tensor
        return self.config.shift_index_tensor(step if step.device == device else step.to(device))
