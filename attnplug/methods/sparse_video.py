"""Sparse video attention for video DiTs: block-sparse patterns for full 3D attention over frames x height x width.

The config picks a pattern (:mod:`attnplug.methods.patterns`: ``tiles`` = sliding tile attention, ``heads`` =
Sparse VideoGen's spatial/temporal heads, ``topk`` = rectified pooled top-k, ``threshold`` = in-kernel skipping);
the method validates the layout at the first call of a run, dispatches each call to the pattern and keeps a bounded
summary of what ran (:meth:`SparseVideoMethod.report`). Steps and layers are the :class:`attnplug.Schedule`'s; the
default one (:meth:`SparseVideoConfig.default_schedule`) keeps the first steps dense, like Sparse VideoGen.
Tensors are ``(B, H, N, D)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._args import as_tuple
from .._logging import log_once
from ..config import MethodConfig, Schedule, help_field
from ..kernels.block_sparse.dispatch import needs_backward
from ..layout import TokenLayout
from .base import AttentionMethod, CallInfo
from .patterns import DEFAULT_THRESHOLD, PATTERNS, CallSummary, PlanCache, key_padding
from .patterns.base import Plan, check_kernel_blocks, with_scale

logger = logging.getLogger(__name__)

OWNER = "SparseVideoConfig"
#: Dense warm-up steps of the default schedule (Sparse VideoGen keeps the first 10-30 % of 50 steps dense).
DEFAULT_WARMUP_STEPS = 0.1  # a fraction of the steps: Sparse VideoGen 2 keeps 10 % dense (5 of 50)


def _number(name: str, value: Any, low: float, high: float, high_open: bool = False) -> None:
    """``ValueError`` unless ``value`` is a real number in ``(low, high]`` (``(low, high)`` with ``high_open``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low < value
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        rng = f"({low}, {high})" if high_open else f"({low}, {high}]"
        raise ValueError(f"{OWNER}.{name} must be a number in {rng}, got {value!r}.")


@dataclass(frozen=True)
class SparseVideoConfig(MethodConfig):
    """Block-sparse attention for video DiTs (sliding tiles, spatial/temporal heads, rectified top-k, threshold).

    Grid arguments (``tile``, ``window``, ``stride``) follow the package rule (:mod:`attnplug._args`): an int or a
    2-tuple is spatial ``(height, width)``, a 3-tuple is ``(frames, height, width)``. The frames entry then defaults
    to 1 token for ``tile``, the whole frame range for ``window`` and 1 tile for ``stride``.
    """

    name: ClassVar[str] = "sparse_video"

    pattern: str = help_field(
        "tiles",
        "Block pattern: 'tiles' (3D sliding tile attention), 'heads' (spatial/temporal heads chosen online), 'topk' "
        "(pooled-score block selection with rectification) or 'threshold' (all blocks, in-kernel skipping).",
        choices=tuple(PATTERNS),
    )
    density: float = help_field(
        0.25, "Target fraction of (query, key) image pairs attended, in (0, 1]; 1 = dense attention.", min=0, max=1
    )
    block_size: int = help_field(
        64, "Tokens per block for 'heads', 'topk' and 'threshold' ('tiles' uses the tile).", min=1
    )
    tile: int | tuple[int, ...] = help_field(
        (4, 4, 4), "Tile in tokens: one kernel block. An int or (height, width) keeps one frame per tile.", min=1
    )
    window: int | tuple[int | None, ...] | None = help_field(
        None, "'tiles': window in tiles (None entries: the whole dimension); None = chosen from `density`.", min=1
    )
    stride: int | tuple[int, ...] = help_field(
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
    num_sampled_rows: int = help_field(64, "'heads': query rows sampled per call to choose each head's mask.", min=1)
    topk_mass: float | None = help_field(
        None, "'topk': keep blocks until this cumulative pooled mass (in (0, 1]), at most the density budget.",
        min=0, max=1,
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
        f"In-kernel skipping threshold in natural-log units (> 0) on top of any pattern; None = off ('threshold' "
        f"pattern: {DEFAULT_THRESHOLD}).",
        min=0,
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
        object.__setattr__(self, "stride", as_tuple(self.stride, 3, "stride", OWNER, spatial=2, fill=1, minimum=1))
        if self.window is not None:
            window = as_tuple(self.window, 3, "window", OWNER, spatial=2, fill=None, allow_none=True, minimum=1)
            object.__setattr__(self, "window", window)
        _number("density", self.density, 0, 1)
        if self.topk_mass is not None:
            _number("topk_mass", self.topk_mass, 0, 1)
        if self.threshold is not None:
            _number("threshold", self.threshold, 0, math.inf, high_open=True)
        if self.backend == "flex" and (self.threshold is not None or self.pattern == "threshold"):
            raise ValueError(f"{OWNER}.backend='flex' cannot skip blocks by threshold (pattern={self.pattern!r}, "
                             f"threshold={self.threshold!r}); use backend='triton' or 'torch', or no threshold.")
        for name in ("block_size", "num_sampled_rows", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{OWNER}.{name} must be an int, got {value!r}.")
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
        return SparseVideoMethod(self)


class SparseVideoMethod(AttentionMethod):
    """Block-sparse video attention built from a :class:`SparseVideoConfig`.

    ``method(q, k, v, layout, mask=None, info=None)`` with ``q, k, v (B, H, N, D)`` returns ``(B, H, N, D)``, or None
    (hand back to stock attention) for cross-attention shapes, masks other than boolean key padding on text tokens,
    ``density=1`` and windows covering the whole grid. Thread-safe: plans are immutable and shared, the summary is
    updated under a lock.
    """

    #: Boolean key-padding masks ``(B|1, 1, 1, N)`` on text tokens (HunyuanVideo's padded prompts) are honoured.
    supports_mask = True

    def __init__(self, config: SparseVideoConfig | None = None, max_plans: int = 16):
        self.config = config or SparseVideoConfig()
        self.pattern = PATTERNS[self.config.pattern](self.config)
        self._plans = PlanCache(max_plans)
        self._summary = CallSummary()

    def reset(self) -> None:
        """Forget the summary of the previous run (plans stay cached)."""
        self._summary.clear()

    def report(self) -> dict:
        """What ran since the last :meth:`reset` (a new denoising run), see :class:`~.patterns.CallSummary`: call
        counts, hand-back reasons, the density used (mean fraction of token pairs in the LUT over the sparse calls,
        text included; ``effective_density`` after threshold skipping), per layer and per step, and the plans."""
        return {"pattern": self.config.pattern, **self._summary.as_dict()}

    def prepare(self, layout: TokenLayout, info: CallInfo | None = None, device: torch.device | str = "cpu") -> None:
        """Check the config against ``layout`` on ``device`` without running anything: call it at the first call of
        a run (step 0), also when the schedule keeps that step dense, so an impossible config fails before any
        denoising step. ``ValueError`` prefixed ``SparseVideoConfig.`` naming the fix."""
        if self.pattern.video_only and not layout.is_video:
            raise ValueError(
                f"{OWNER}.pattern={self.config.pattern!r} needs a video token layout (frames > 1), got {layout}. Use "
                "pattern='topk' or 'threshold' for single-frame layouts, or pass the video layout."
            )
        tile = self.pattern.tile_for(layout.grid) if self.config.pattern == "tiles" else None
        check_kernel_blocks(self.pattern.block_for(layout.grid, device), tile, layout.grid, device, self.config)

    def _build(self, layout: TokenLayout, device) -> Plan:
        self.prepare(layout, None, device)
        plan = self.pattern.plan(layout, device)
        self._summary.add_plan(plan)
        return plan

    def _plan(self, layout: TokenLayout, device) -> Plan:
        return self._plans.get(replace(layout, text_first=False), device, self._build)

    def _hand_back(self, info: CallInfo, reason: str, device) -> None:
        self._summary.add(info, None, reason=reason, device=device)
        self.hand_back(reason)

    # ------------------------------------------------------------------ entry point
    def __call__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        layout: TokenLayout | None = None,
        mask: Tensor | None = None,
        info: CallInfo | None = None,
    ) -> Tensor | None:
        cfg, n = self.config, q.shape[-2]
        info = with_scale(info, q.shape[-1])
        if k.shape[-2] != n:
            self._hand_back(info, "cross-attention", q.device)
            return None
        layout = layout if layout is not None else TokenLayout.square(n)
        layout.check(n)
        if cfg.density >= 1.0 and cfg.effective_threshold is None:
            self._hand_back(info, "density-1", q.device)
            return None
        if needs_backward(q, k, v) and self._backend(q) == "triton":
            log_once(logger, logging.WARNING, "sparse_video: the Triton kernel has no backward, and these inputs "
                     "require grad; those calls run stock attention (use torch.no_grad() for inference).")
            self._hand_back(info, "requires-grad", q.device)
            return None
        plan = self._plan(layout, q.device)
        if plan.covers_all and cfg.effective_threshold is None:
            self._hand_back(info, "window-covers-grid", q.device)
            return None
        keep = None
        if mask is not None:
            keep = key_padding(mask, q.shape[0], n)
            if keep is None:
                log_once(logger, logging.WARNING, "sparse_video: an attention mask other than a boolean key-padding "
                         "mask (B|1, 1, 1, N) was given; those calls are handed back to stock attention.")
                self._hand_back(info, "mask-not-key-padding", q.device)
                return None
            keep = layout.to_text_last(keep, dim=-1)
        qt, kt, vt = (layout.to_text_last(x) for x in (q, k, v))
        res = self.pattern.run(qt, kt, vt, plan, info, keep)
        self._summary.add(info, plan, res)
        return layout.from_text_last(res.out)

    def _backend(self, q: Tensor) -> str:
        from ..kernels.block_sparse import choose_backend

        return choose_backend(self.config.backend, q)[0]
