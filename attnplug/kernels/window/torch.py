"""Shifted-window attention in plain torch: the token grid is rolled by the plan's shift, padded to whole windows,
cut into windows, and all windows attend in one batched SDPA call (padded keys masked out, padded outputs dropped).
Text tokens of joint attention stay global. :func:`shifted_window_attention` does the same with the roll, padding and
partition of every shift position precomputed as index lists (:func:`shift_tables`), picked by a tensor index."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..._args import as_tuple
from ...layout import TokenLayout
from .._cache import BoundedCache

__all__ = [
    "ShiftTables",
    "WindowPlan",
    "partition",
    "reverse",
    "shift_tables",
    "shifted_window_attention",
    "window_attention",
    "window_plan",
]

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


@dataclass(frozen=True)
class ShiftTables:
    """Token orders of every shift position of one window geometry, on one device, so that a call picks its shift
    with a tensor index (no Python value per step for a compiled graph to specialise on).

    ``gather[i]`` lists, in window order, the image token at each window position for shift position ``i``
    (padding positions point at token 0; they are masked as keys and dropped as queries); ``scatter[i]`` gives each
    image token's window position. Both are what :func:`partition` / :func:`reverse` do, as index lists."""

    plan: WindowPlan  # the geometry, unshifted
    gather: torch.Tensor  # (num_shifts, num_windows * window_tokens) int64
    scatter: torch.Tensor  # (num_shifts, F*H*W) int64
    valid: torch.Tensor | None  # (num_windows, window_tokens) bool, None without padding


_TABLES = BoundedCache(32)


def shift_tables(plan: WindowPlan, num_shifts: int, device: torch.device | str) -> ShiftTables:
    """The :class:`ShiftTables` of ``plan``'s geometry for shift positions ``0..num_shifts-1`` (shift ``i`` is
    ``(window // num_shifts) * i`` where the window is shorter than the grid, as :func:`window_plan`); cached."""
    key = (plan.grid, plan.window, num_shifts, str(device))
    return _TABLES.get_or_build(key, lambda: _build_tables(plan, num_shifts, torch.device(device)))


def _build_tables(plan: WindowPlan, num_shifts: int, device: torch.device) -> ShiftTables:
    n = plan.grid[0] * plan.grid[1] * plan.grid[2]
    base = WindowPlan(plan.grid, plan.window, (0, 0, 0))
    tokens = torch.arange(1, n + 1, device=device).view(1, 1, n, 1)  # 0 marks padding after partition
    gather, scatter = [], []
    for i in range(num_shifts):
        shift = tuple(0 if w >= g else (w // num_shifts) * i for w, g in zip(plan.window, plan.grid))
        shifted = WindowPlan(plan.grid, plan.window, shift)
        windows = partition(tokens, shifted)
        gather.append((windows.flatten() - 1).clamp_min(0))
        positions = torch.arange(windows.numel(), device=device).view(windows.shape)
        scatter.append(reverse(positions, shifted).flatten())
    valid = _key_valid(plan.grid, plan.window, device) if any(plan.padding) else None
    return ShiftTables(base, torch.stack(gather), torch.stack(scatter), valid)


def _attend_windows(
    qw: torch.Tensor,
    kw: torch.Tensor,
    vw: torch.Tensor,
    valid: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: TokenLayout,
    scale: float | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Image queries ``qw (B, H, nW, S, D)`` attend to their window's keys ``kw, vw`` (masked by ``valid (nW, S)``)
    plus every text key of ``k, v (B, H, N, D)``; the text queries of ``q (B, H, N, D)`` attend to every key.

    Returns ``(windows (B, H, nW, S, D), text (B, H, T, D) or None)``."""
    b, h, nw, s, d = qw.shape
    t = layout.text_tokens
    if t:
        kt, vt = layout.split(k)[1], layout.split(v)[1]
        kw = torch.cat([kw, kt[:, :, None].expand(b, h, nw, t, d)], dim=3)
        vw = torch.cat([vw, vt[:, :, None].expand(b, h, nw, t, d)], dim=3)
        if valid is not None:
            valid = torch.cat([valid, torch.ones(nw, t, dtype=torch.bool, device=qw.device)], dim=1)
    mask = None if valid is None else valid[:, None, :]  # (nW, 1, S[+T]) over (B*H, nW, S, S[+T])
    out = F.scaled_dot_product_attention(
        qw.reshape(b * h, nw, s, d), kw.reshape(b * h, nw, -1, d), vw.reshape(b * h, nw, -1, d), attn_mask=mask,
        scale=scale,
    )
    text = F.scaled_dot_product_attention(layout.split(q)[1], k, v, scale=scale) if t else None
    return out.reshape(b, h, nw, s, d), text


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
    qw, kw, vw = (partition(layout.split(x)[0], plan) for x in (q, k, v))
    valid = _key_valid(plan.grid, plan.window, q.device) if any(plan.padding) else None
    out, text = _attend_windows(qw, kw, vw, valid, q, k, v, layout, scale)
    out_img = reverse(out, plan)
    return out_img if text is None else layout.merge(out_img, text)


def _row(table: torch.Tensor, index: int | torch.Tensor) -> torch.Tensor:
    """``table[index]`` for an int or a 0-d int64 tensor; the tensor goes through ``index_select``, because indexing
    with a 0-d tensor reads its value on the host (and cannot be traced without that value)."""
    if isinstance(index, int):
        return table[index]
    return table.index_select(0, index.reshape(1)).squeeze(0)


def shifted_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: TokenLayout,
    tables: ShiftTables,
    shift: int | torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """:func:`window_attention` at shift position ``shift`` of ``tables``, chosen by index: ``shift`` is an int or
    a 0-d int64 tensor on ``q``'s device (a compiled graph then takes it as an input, one graph for every shift).

    Args:
        q, k, v: ``(B, H, N, D)``, ``N = layout.num_tokens``; ``tables.plan.grid`` must equal ``layout.grid``.

    Returns:
        ``(B, H, N, D)``, equal to ``window_attention`` with the plan of that shift position.
    """
    layout.check(q.shape[-2])
    plan = tables.plan
    if tuple(plan.grid) != layout.grid:
        raise ValueError(f"window tables grid {plan.grid} do not match the layout grid {layout.grid}.")
    b, h, _, d = q.shape
    nw, s = math.prod(plan.counts), math.prod(plan.window)
    gather = _row(tables.gather, shift)  # (nW * S,)
    qw, kw, vw = (layout.split(x)[0].index_select(2, gather).view(b, h, nw, s, d) for x in (q, k, v))
    out, text = _attend_windows(qw, kw, vw, tables.valid, q, k, v, layout, scale)
    out_img = out.view(b, h, nw * s, d).index_select(2, _row(tables.scatter, shift))
    return out_img if text is None else layout.merge(out_img, text)
