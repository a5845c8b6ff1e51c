"""FreeSwim's config, importable without torch (the CLI lists and validates it before anything loads)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from .._args import as_tuple
from ..config import MethodConfig, help_field
from .neighborhood_config import NEIGHBORHOOD_BACKENDS

if TYPE_CHECKING:
    from .freeswim import FreeSwimMethod


@dataclass(frozen=True)
class FreeSwimConfig(MethodConfig):
    """FreeSwim: inward sliding-window self-attention sized to the training resolution + full-branch cross-attention
    override, refreshed every ``refresh_every`` steps (the plugin registers the method's model hook)."""

    name: ClassVar[str] = "freeswim"
    train_grid: int | tuple | None = help_field(
        None, "Training-resolution token grid of the denoiser input (latent / patch; Wan 2.1 480p: (30, 52)): an int "
        "(height = width), (height, width) or (frames, height, width); the window is this size rounded up to odd, "
        "scaled with each layer's grid on U-Nets. None: the model's own training grid (from its config).", min=1,
    )
    refresh_every: int = help_field(
        2, "Run the full-attention branch every this many steps and reuse its cross-attention outputs in between "
        "(1 = every step, FreeSwim's no-cache variant).", min=1,
    )
    override_cross_attention: bool = help_field(
        True, "Replace the windowed branch's cross-attention outputs by the full branch's (the dual path)."
    )
    backend: str = help_field(
        "auto", "Neighbourhood backend of the windowed branch.", choices=NEIGHBORHOOD_BACKENDS
    )

    def __post_init__(self):
        owner = type(self).__name__
        if self.train_grid is not None:
            grid = as_tuple(self.train_grid, 3, "train_grid", owner, spatial=2, fill=None, allow_none=True,
                            minimum=1)
            if grid[1] is None or grid[2] is None:
                raise ValueError(f"{owner}.train_grid needs a height and a width, got {self.train_grid!r}.")
            object.__setattr__(self, "train_grid", grid)  # (frames or None, height, width)
        r = self.refresh_every
        if isinstance(r, bool) or not isinstance(r, int):
            raise TypeError(f"{owner}.refresh_every must be an int >= 1, got {r!r}.")
        if not isinstance(self.override_cross_attention, bool):
            raise TypeError(f"{owner}.override_cross_attention must be a bool, got {self.override_cross_attention!r}.")
        super().__post_init__()

    def build(self) -> FreeSwimMethod:
        from .freeswim import FreeSwimMethod

        return FreeSwimMethod(self)
