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
from dataclasses import replace

import torch
from torch import Tensor

from .._logging import log_once
from ..kernels.block_sparse.dispatch import needs_backward
from ..layout import TokenLayout
from ..reasons import register
from .base import AttentionMethod, CallInfo
from .patterns import PATTERNS, CallSummary, PlanCache, key_padding
from .patterns.base import Plan, check_kernel_blocks, with_scale
from .sparse_video_config import DEFAULT_WARMUP_STEPS, OWNER, SparseVideoConfig  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)
register("density-1", "density 1: the pattern would attend every pair, so stock attention runs")

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
