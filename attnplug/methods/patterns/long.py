"""Long-video attention: a training-length temporal window around every query frame plus global anchor frames.

Built for videos several times longer than a model's training length: attention over keys beyond a training-length
window disperses the pattern the model learned (UltraViCo, arXiv 2511.20123), and sparse attention built for the
extended length runs Wan 2.1 1.3B at 4x 2.41x faster than dense (LVSA, arXiv 2605.31057). On a grid of ``F`` latent
frames, query frame ``f`` attends the key frames

- of the window ``[start, start + W)`` with ``start = clamp(f - W // 2, 0, F - W)``: NATTEN's window, clamped inward
  at the ends of the video, so every query sees exactly ``W`` frames (``W = window``, in latent frames);
- of the anchor frames ``floor(i * F / A)`` for ``i < A`` (``A = anchors``): the first frame (an attention sink) and
  ``A - 1`` more, evenly spaced over the whole video;
- and every text (non-grid) token; text queries attend every key (joint attention).

Planned on the tile-major order of ``tiles`` with one tile per frame (``tile = (1, height, width)``): each latent
frame is one kernel block of ``slots`` positions (its ``height x width`` tokens; on the GPU kernels rounded up to a
multiple of ``block_size``, default 64, or of a smaller power of two >= 16 for small frames (:func:`frame_slots`),
padded like ``tile_fit="pad"``: empty positions are never attended, the kernel's ``kv_keep``), so the block mask is
exactly the frame mask above and every block is full or empty. All query blocks of a frame have the same LUT row,
and a row is one contiguous range of key blocks (the window) plus a few more (anchors, text).

On the CPU the block-sparse torch path runs this plan as one job per query frame (the clamped frames at either end
of the video share one): SDPA over the window's key frames, the anchor frames and the text, in key chunks merged
by log-sum-exp (chunks inside the window are zero-copy slices). Measured on 2 shared cores, ``(84, 10, 16)`` tokens,
4 heads x 64, window 21, 2 anchors (density 0.27): 3.0x faster than dense SDPA (0.82 / density). Tensors are
``(B, H, N, D)``.

With ``damping=(L, alpha)`` (UltraViCo's damping composed with the pattern, :func:`damped_frame_pairs`) the plan also
flags every kept (query frame, key frame) block pair more than ``L / 2`` frames apart (anchor frames far from the
query, and the window's far side at the clamped ends of the video; text blocks never): the kernels multiply the
positive scaled scores of those pairs by ``alpha``. A block is one frame, so the flag is exact per token pair.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...kernels.block_sparse.masks import dim_window
from ...layout import TokenLayout
from ..base import CallInfo
from .base import ConfiguredPattern, PatternOutput, Plan, run_static
from .common import add_global_blocks, lut_from_block_mask
from .tiles import padded_tile_order

__all__ = ["LongPattern", "anchor_positions", "damped_frame_pairs", "frame_slots", "long_frame_mask",
           "long_window_for_density", "window_starts"]


def anchor_positions(frames: int, anchors: int) -> tuple[int, ...]:
    """The anchor frames ``floor(i * frames / anchors)`` for ``i < min(anchors, frames)`` (the first is frame 0)."""
    count = min(anchors, frames)
    return tuple(i * frames // count for i in range(count)) if count else ()


def window_starts(frames: int, window: int) -> Tensor:
    """``(F,)`` int64 first key frame of each query frame's window (NATTEN's clamped-inward rule)."""
    _, start, _ = dim_window(torch.arange(frames), frames, kernel=window, dilation=1, stride=1, causal=False)
    return start


def long_frame_mask(frames: int, window: int, anchors: int) -> Tensor:
    """Bool ``(F, F)`` frame mask: query frame (row) attends key frame (column); ``window`` in ``[1, frames]``."""
    if not 1 <= window <= frames:
        raise ValueError(f"window={window} must lie in [1, {frames}] latent frames.")
    start = window_starts(frames, window)
    key = torch.arange(frames)
    mask = (key[None, :] >= start[:, None]) & (key[None, :] < start[:, None] + window)
    mask[:, list(anchor_positions(frames, anchors))] = True
    return mask


def damped_frame_pairs(frames: int, train: int) -> Tensor:
    """Bool ``(F, F)``: query frame (row) and key frame (column) more than ``train / 2`` frames apart (UltraViCo's far
    pairs, :func:`attnplug.pipelines._long_video.damping.far_pairs` per frame)."""
    f = torch.arange(frames)
    return (f[:, None] - f[None, :]).abs() * 2 > train


def long_window_for_density(frames: int, anchors: int, density: float) -> int:
    """The window (latent frames) whose frame-mask density, anchors included, is closest to ``density``
    (over-shooting the budget costs twice as much as under-shooting it)."""
    best, best_cost = 1, math.inf
    for window in range(1, frames + 1):
        d = float(long_frame_mask(frames, window, anchors).double().mean())
        gap = math.log(d / density)
        cost = 2.0 * gap if gap > 0 else -gap
        if cost < best_cost - 1e-12:
            best, best_cost = window, cost
    return best


def frame_slots(frame_tokens: int, device_kernel: bool, unit: int = 64) -> int:
    """Positions per frame block: the frame's tokens on the CPU path; for the GPU kernels rounded up to a multiple
    of ``min(unit, next power of two >= max(16, frame_tokens))`` (the kernels' tiles are power-of-two divisors of a
    block: a larger unit runs larger tiles, a smaller one pads less)."""
    if not device_kernel:
        return frame_tokens
    unit = min(unit, 1 << (max(16, frame_tokens) - 1).bit_length())
    return unit * math.ceil(frame_tokens / unit)


class LongPattern(ConfiguredPattern):
    """``pattern="long"``: a temporal window around every query frame plus anchor frames; text global (see the
    module)."""

    name = "long"
    video_only = True

    def __init__(self, config, damping: tuple[int, float] | None = None):
        """``damping``: ``(L, alpha)``, UltraViCo's damping of the kept block pairs more than ``L / 2`` frames apart
        (``L`` the training length in latent frames), or None (the plain pattern)."""
        super().__init__(config)
        if damping is not None:
            train, factor = damping
            if isinstance(train, bool) or not isinstance(train, int) or train < 1:
                raise ValueError(f"LongPattern: damping window {train!r} must be a positive int (latent frames).")
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
                raise ValueError(f"LongPattern: damping factor {factor!r} must be a number in (0, 1].")
            damping = (train, float(factor))
        self.damping = damping

    def window_for(self, frames: int) -> tuple[int, str]:
        """``(window in latent frames, where it comes from)``: ``window_frames``, else ``train_latent_frames`` (the
        training length), else chosen from ``density``; cut to ``frames``."""
        cfg = self.config
        if cfg.window_frames is not None:
            return min(cfg.window_frames, frames), "window_frames"
        if cfg.train_latent_frames is not None:
            return min(cfg.train_latent_frames, frames), "train_latent_frames"
        return long_window_for_density(frames, cfg.anchor_frames, cfg.density), "density"

    def _device_kernel(self, device) -> bool:
        from ...kernels.block_sparse import choose_backend

        return choose_backend(self.config.backend, torch.empty(0, device=device))[0] in ("triton", "flex")

    def block_for(self, grid: tuple[int, int, int], device="cpu") -> int:
        """Tokens per kernel block on ``grid``: one frame's slots (padded to a multiple of ``block_size`` on the GPU
        kernels)."""
        return frame_slots(grid[1] * grid[2], self._device_kernel(device), self.config.block_size)

    def plan(self, layout: TokenLayout, device) -> Plan:
        """Frame-block order (padded per frame on the GPU kernels), the ``(M, M)`` block mask (text global) and
        its LUT on ``device``."""
        n, n_img = layout.num_tokens, layout.image_tokens
        frames, hw = layout.frames, layout.height * layout.width
        slots = self.block_for(layout.grid, device)
        src, pos, keep, _ = padded_tile_order(layout.grid, (1, layout.height, layout.width), slots, n - n_img)
        window, source = self.window_for(frames)
        anchors = anchor_positions(frames, self.config.anchor_frames)
        n_p = src.numel()
        m = math.ceil(n_p / slots)
        mask = torch.zeros(m, m, dtype=torch.bool)
        mask[:frames, :frames] = long_frame_mask(frames, window, self.config.anchor_frames)
        mask = add_global_blocks(mask, frames * slots, n_p, slots)
        lut = lut_from_block_mask(mask[None, None], slots)
        real = torch.bincount(pos // slots, minlength=m).double()
        density = float((mask.double() * real[:, None] * real[None, :]).sum()) / (n * n)
        padded = n_p != n
        details = {"window_frames": window, "window_source": source, "anchor_frames": anchors, "slots": slots,
                   "frame_tokens": hw, "padded_positions": n_p - n}
        tables, damped = {}, False
        if self.damping is not None:
            train, factor = self.damping
            far = torch.zeros(m, m, dtype=torch.bool)
            far[:frames, :frames] = damped_frame_pairs(frames, train)
            far &= mask
            rows = torch.arange(m)[:, None].expand_as(lut.indices[0, 0])
            flags = far[rows, lut.indices[0, 0].long()] & (torch.arange(lut.max_k_blocks) < lut.counts[0, 0, :, None])
            damped = bool(far.any())
            if damped:
                tables["damp"] = flags[None, None].contiguous().to(device)
            details.update(damping_window=train, damping_factor=factor, damped_block_pairs=int(far.sum()),
                           damped_pair_fraction=float((far.double() * real[:, None] * real[None, :]).sum()) / (n * n))
        return Plan(
            layout=layout, block=slots, perm=src.to(device) if padded else None,
            inv=pos.to(device) if padded else None, keep=keep[None].to(device) if padded else None,
            lut=lut.to(device), mask=mask, density=density, covers_all=bool(mask.all()) and not damped,
            details=details, tables=tables,
        )

    def run(self, q: Tensor, k: Tensor, v: Tensor, plan: Plan, info: CallInfo, keep: Tensor | None = None
            ) -> PatternOutput:
        """One call on text-last ``q, k, v (B, H, N, D)`` with optional key padding ``keep (B, N)`` (damped when the
        pattern was built with ``damping`` and the plan has far pairs)."""
        if self.damping is None:
            return run_static(q, k, v, plan, info, self.config, keep)
        return run_static(q, k, v, plan, info, self.config, keep, self.damping[1])
