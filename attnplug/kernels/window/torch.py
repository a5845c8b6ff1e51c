"""Shifted-window attention in plain torch: the token grid is rolled by the plan's shift, padded to whole windows,
cut into windows, and all windows attend in one batched SDPA call (padded keys masked out, padded outputs dropped).
Text tokens of joint attention stay global."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..._args import as_tuple
from ...layout import TokenLayout

__all__ = ["WindowPlan", "partition", "reverse", "window_attention", "window_plan"]

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class WindowPlan:
    """Windows of one ``(frames, height, width)`` grid: per dimension the window size and the cyclic shift."""

    grid: Triple
    window: Triple
    shift: Triple

    @property
    def counts(self) -> Triple:
        """Windows per dimension (``ceil(grid / window)``)."""
        return tuple(-(-n // w) for n, w in zip(self.grid, self.window))

    @property
    def padding(self) -> Triple:
        """Positions added at the end of each dimension to make whole windows."""
        return tuple(c * w - n for n, w, c in zip(self.grid, self.window, self.counts))

    @property
    def is_dense(self) -> bool:
        """Whether one window covers the whole grid (window attention is then dense attention)."""
        return all(w >= n for n, w in zip(self.grid, self.window))


def window_plan(
    grid: Triple,
    window_size: int | tuple | None = None,
    window_fraction: float | tuple = 0.5,
    shift_index: int = 0,
    num_shifts: int = 4,
) -> WindowPlan:
    """Window sizes and shifts for ``grid = (frames, height, width)``.

    Per dimension of length ``L``: ``w = window_size`` if given, else ``ceil(L * window_fraction)``, cut to ``L``.
    A scalar or a 2-tuple covers (height, width); frames are unwindowed unless a 3-tuple is given (a ``None`` entry
    of ``window_size`` also means unwindowed). The shift is ``(w // num_shifts) * shift_index`` (0 where ``w >= L``).
    """
    if window_size is not None:
        sizes = as_tuple(window_size, 3, "window_size", "window_plan", spatial=2, fill=None, allow_none=True,
                         minimum=1)
        sizes = tuple(n if s is None else s for s, n in zip(sizes, grid))
    else:
        fr = as_tuple(window_fraction, 3, "window_fraction", "window_plan", kind=float, spatial=2, fill=1.0,
                      minimum=0.0, min_exclusive=True, maximum=1.0)
        sizes = tuple(math.ceil(n * f) for n, f in zip(grid, fr))
    window = tuple(max(1, min(w, n)) for w, n in zip(sizes, grid))
    shift = tuple(0 if w >= n else (w // num_shifts) * shift_index for w, n in zip(window, grid))
    return WindowPlan(tuple(grid), window, shift)


def partition(x: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
    """``(B, H, F*Hh*W, D)`` image tokens -> ``(B, H, num_windows, window_tokens, D)`` (rolled, zero-padded)."""
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


def reverse(x: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
    """Inverse of :func:`partition`: ``(B, H, num_windows, window_tokens, D)`` -> ``(B, H, F*Hh*W, D)``."""
    b, h, _, _, d = x.shape
    f, hh, w = plan.grid
    (wf, wy, wx), (nf, ny, nx) = plan.window, plan.counts
    x = x.reshape(b, h, nf, ny, nx, wf, wy, wx, d).permute(0, 1, 2, 5, 3, 6, 4, 7, 8)
    x = x.reshape(b, h, nf * wf, ny * wy, nx * wx, d)[:, :, :f, :hh, :w]
    if any(plan.shift):
        x = torch.roll(x, shifts=plan.shift, dims=(2, 3, 4))
    return x.reshape(b, h, f * hh * w, d)


@functools.lru_cache(maxsize=32)
def _key_valid(grid: Triple, window: Triple, device: torch.device) -> torch.Tensor:
    """``(num_windows, window_tokens)`` bool: which window positions are real tokens (shift-independent)."""
    ones = torch.ones(1, 1, grid[0] * grid[1] * grid[2], 1, device=device)
    return partition(ones, WindowPlan(grid, window, (0, 0, 0)))[0, 0, :, :, 0] > 0


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: TokenLayout,
    plan: WindowPlan,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention inside the (shifted, padded) windows of ``plan``; text tokens global (text queries attend to every
    key, image queries to their window plus every text key).

    Args:
        q, k, v: ``(B, H, N, D)``, ``N = layout.num_tokens``.
        layout: token layout; ``plan.grid`` must equal ``layout.grid``.
        plan: from :func:`window_plan`.
        scale: softmax scale (None: ``1/sqrt(D)``).

    Returns:
        ``(B, H, N, D)``.
    """
    layout.check(q.shape[-2])
    if tuple(plan.grid) != layout.grid:
        raise ValueError(f"window plan grid {plan.grid} does not match the layout grid {layout.grid}.")
    if plan.is_dense:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    b, h, _, d = q.shape
    qi, qt = layout.split(q)
    ki, kt = layout.split(k)
    vi, vt = layout.split(v)
    qw, kw, vw = partition(qi, plan), partition(ki, plan), partition(vi, plan)
    nw, s = qw.shape[2], qw.shape[3]
    valid = _key_valid(plan.grid, plan.window, q.device) if any(plan.padding) else None
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
    out_img = reverse(out.reshape(b, h, nw, s, d), plan)
    if not t:
        return out_img
    out_txt = F.scaled_dot_product_attention(qt, k, v, scale=scale)
    return layout.merge(out_img, out_txt)
