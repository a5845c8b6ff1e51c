"""Sparse video attention's config, importable without torch (the CLI lists and validates it before anything loads)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from .._args import as_tuple
from ..config import MethodConfig, Schedule, field_specs, help_field

if TYPE_CHECKING:
    from .sparse_video import SparseVideoMethod

OWNER = "SparseVideoConfig"
#: Dense warm-up steps of the default schedule (Sparse VideoGen keeps the first 10-30 % of 50 steps dense).
DEFAULT_WARMUP_STEPS = 0.1  # a fraction of the steps: Sparse VideoGen 2 keeps 10 % dense (5 of 50)
#: The patterns of :mod:`attnplug.methods.patterns` (``PATTERNS``; a test keeps the two equal), named here so the
#: config needs no torch.
PATTERN_NAMES = ("tiles", "heads", "topk", "threshold", "long")
#: The ``threshold`` pattern's default skipping threshold (``patterns.threshold.DEFAULT_THRESHOLD``).
DEFAULT_THRESHOLD = 8.0


@dataclass(frozen=True)
class SparseVideoConfig(MethodConfig):
    """Block-sparse attention for video DiTs (sliding tiles, spatial/temporal heads, rectified top-k, threshold, long
    video windows with anchor frames).

    Grid arguments (``tile`` in tokens, ``window_tiles`` and ``stride_tiles`` in tiles) follow the package rule
    (:mod:`attnplug._args`): an int or a 2-tuple is spatial ``(height, width)``, a 3-tuple is ``(frames, height,
    width)``. The frames entry then defaults to 1 token for ``tile``, the whole frame range for ``window_tiles`` and
    1 tile for ``stride_tiles``.
    """

    name: ClassVar[str] = "sparse_video"

    pattern: str = help_field(
        "tiles",
        "Block pattern: 'tiles' (3D sliding tile attention), 'heads' (spatial/temporal heads chosen online), 'topk' "
        "(pooled-score block selection with rectification), 'threshold' (all blocks, in-kernel skipping) or 'long' "
        "(a temporal window around every query frame plus anchor frames, for videos longer than the training length).",
        choices=PATTERN_NAMES,
    )
    density: float = help_field(
        0.25, "Target fraction of (query, key) image pairs attended; 1 = dense attention.", min=0, max=1,
        min_open=True,
    )
    block_size: int = help_field(
        64, "Tokens per block for 'heads', 'topk' and 'threshold' ('tiles' uses the tile); 'long': the unit its "
        "frame blocks are padded to on the GPU kernels.", min=1
    )
    tile: int | tuple[int, ...] = help_field(
        (4, 4, 4), "Tile in tokens: one kernel block. An int or (height, width) keeps one frame per tile. 'long' "
        "does not use it (one block per latent frame).", min=1
    )
    window_tiles: int | tuple[int | None, ...] | None = help_field(
        None, "'tiles': window in tiles (None entries: the whole dimension); None = chosen from `density`.", min=1
    )
    stride_tiles: int | tuple[int, ...] = help_field(
        (1, 1, 1),
        "'tiles': GNA-style stride in tiles: query tiles of a stride group share their leader's window (NATTEN's "
        "rule); clipped to the window.",
        min=1,
    )
    tile_fit: str = help_field(
        "pad",
        "If the tile does not divide the token grid: 'pad' the grid up to a multiple of the tile (padded positions "
        "are never attended; exact STA with the requested tile), 'shrink' each entry to the largest divisor of its "
        "grid dimension no larger than it (logged at WARNING), or 'error'.",
        choices=("pad", "shrink", "error"),
    )
    window_frames: int | None = help_field(
        None, "'long': temporal window in latent frames around every query frame; None = the training length "
        "(`train_latent_frames`), or else the window whose density is closest to `density`.", min=1
    )
    train_latent_frames: int | None = help_field(
        None, "'long': the model's training length in latent frames (Wan 2.1: 21), the default window; None = "
        "unknown.", min=1
    )
    anchor_frames: int = help_field(
        2, "'long': global anchor frames every query attends besides its window: the first latent frame (a sink) "
        "and evenly spaced ones over the whole video.", min=0
    )
    num_sampled_rows: int = help_field(64, "'heads': query rows sampled per call to choose each head's mask.", min=1)
    topk_mass: float | None = help_field(
        None, "'topk': keep blocks until this cumulative pooled mass, at most the density budget.",
        min=0, max=1, min_open=True,
    )
    rectify: str = help_field(
        "gapr",
        "'topk' rectification: 'gapr' (compensate skipped blocks where the pooling gain beats the pooling error), "
        "'all' (compensate every skipped block) or 'none' (plain top-k).",
        choices=("gapr", "all", "none"),
    )
    reorder: bool = help_field(
        True, "'topk'/'threshold': permute tokens tile-major (when the tile fits the grid) so blocks are local."
    )
    threshold: float | None = help_field(
        None,
        f"In-kernel skipping threshold in natural-log units on top of any pattern; None = off ('threshold' "
        f"pattern: {DEFAULT_THRESHOLD}).",
        min=0, max=math.inf, min_open=True, max_open=True,
    )
    seed: int = help_field(0, "Seed of the row sampling of 'heads' (results are deterministic given it).", min=0)
    backend: str = help_field(
        "auto",
        "Block-sparse kernel backend: auto (Triton on CUDA, torch elsewhere), triton, flex (FlexAttention; no "
        "threshold), torch or reference.",
        choices=("auto", "triton", "flex", "torch", "reference"),
    )

    def __post_init__(self):
        object.__setattr__(self, "tile", as_tuple(self.tile, 3, "tile", OWNER, spatial=2, fill=1, minimum=1))
        stride = as_tuple(self.stride_tiles, 3, "stride_tiles", OWNER, spatial=2, fill=1, minimum=1)
        object.__setattr__(self, "stride_tiles", stride)
        if self.window_tiles is not None:
            window = as_tuple(self.window_tiles, 3, "window_tiles", OWNER, spatial=2, fill=None, allow_none=True,
                              minimum=1)
            object.__setattr__(self, "window_tiles", window)
        for spec in field_specs(type(self)):
            value = getattr(self, spec.name)
            if spec.name in ("density", "topk_mass", "threshold") and value is not None and (
                    isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{OWNER}.{spec.name} must be a number in {spec.range_text()}, got {value!r}.")
        if self.backend == "flex" and (self.threshold is not None or self.pattern == "threshold"):
            raise ValueError(f"{OWNER}.backend='flex' cannot skip blocks by threshold (pattern={self.pattern!r}, "
                             f"threshold={self.threshold!r}); use backend='triton' or 'torch', or no threshold.")
        if self.pattern == "long" and self.threshold is not None:
            raise ValueError(f"{OWNER}.threshold={self.threshold!r} does not apply to pattern='long' (its blocks are "
                             "whole frames, which threshold skipping cannot use); use threshold=None.")
        for name in ("block_size", "num_sampled_rows", "seed", "anchor_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{OWNER}.{name} must be an int, got {value!r}.")
        for name in ("window_frames", "train_latent_frames"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{OWNER}.{name} must be an int (latent frames) or None, got {value!r}.")
        super().__post_init__()

    @property
    def effective_threshold(self) -> float | None:
        """The threshold handed to the kernel (the ``threshold`` pattern defaults to :data:`DEFAULT_THRESHOLD`)."""
        if self.threshold is None and self.pattern == "threshold":
            return DEFAULT_THRESHOLD
        return self.threshold

    def default_schedule(self) -> Schedule:
        """Sparse VideoGen's dense warm-up: the first :data:`DEFAULT_WARMUP_STEPS` (a fraction) of the denoising
        steps stay dense."""
        return Schedule(warmup_steps=DEFAULT_WARMUP_STEPS)

    def build(self) -> SparseVideoMethod:
        from .sparse_video import SparseVideoMethod

        return SparseVideoMethod(self)
