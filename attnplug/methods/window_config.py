"""The shifted-window method's config, importable without torch (the CLI lists and validates it before anything
loads); what needs torch (the random shift table, the window plan) is imported when it is called."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from .._args import as_tuple
from ..config import MethodConfig, help_field

if TYPE_CHECKING:
    import torch

    from ..kernels.window import WindowPlan
    from ..layout import TokenLayout
    from .window import WindowMethod

SHIFT_MODES = ("cycle", "random", "none")
#: The ``random`` shift sequence repeats after this many steps (the usual 1000 training timesteps bound a run).
RANDOM_PERIOD = 1000


@dataclass(frozen=True)
class WindowConfig(MethodConfig):
    """Shifted-window attention with a step-dependent shift (HiDiffusion MSW-MSA) on the highest-resolution
    attention level.

    Sizes are a number (height and width) or a tuple of 2 (height, width) or 3 (frames, height, width); frames are
    not windowed unless a 3-tuple is given.
    """

    name: ClassVar[str] = "window"
    window_fraction: float | tuple = help_field(
        0.5, "Window side as a fraction of the grid side (0.5 = 2 x 2 windows, HiDiffusion's default).", min=0,
        max=1, min_open=True,
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
        import torch

        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step % RANDOM_PERIOD)
        return int(torch.randint(self.num_shifts, (1,), generator=gen))

    def shift_index_tensor(self, step: torch.Tensor) -> torch.Tensor:
        """:meth:`shift_index` of a 0-d int64 ``step`` tensor, as a 0-d int64 tensor on its device (no host read)."""
        import torch

        from .window import _RANDOM_TABLES
        if self.shift == "none":
            return torch.zeros_like(step)
        if self.shift == "cycle":
            return step.clamp_min(0) % self.num_shifts
        table = _RANDOM_TABLES.get_or_build((self, str(step.device)), lambda: self._random_table(step.device))
        index = (step.clamp_min(0) % RANDOM_PERIOD).reshape(1)
        return torch.where(step < 0, 0, table.index_select(0, index).squeeze(0))  # not table[step]: a host read

    def _random_table(self, device: torch.device) -> torch.Tensor:
        """``(RANDOM_PERIOD,)`` int64: the ``random`` shift position of each step."""
        import torch

        return torch.tensor([self.shift_index(step) for step in range(RANDOM_PERIOD)], device=device)

    def plan(self, layout: TokenLayout, step: int = -1) -> WindowPlan:
        """Windows for ``layout`` at ``step``."""
        from ..kernels.window import window_plan

        return window_plan(layout.grid, self.window_size, self.window_fraction, self.shift_index(step),
                           self.num_shifts)

    def build(self) -> WindowMethod:
        from .window import WindowMethod

        return WindowMethod(self)
