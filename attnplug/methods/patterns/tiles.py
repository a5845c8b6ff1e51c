"""Sliding tile attention (STA): 3D sliding windows that move tile by tile, so every block is full or empty.

Image tokens (row-major ``frames x height x width``) are permuted into *tile-major* order: the grid is cut into tiles
of ``tile = (tf, th, tw)`` tokens and each tile becomes one contiguous block of ``tf * th * tw`` tokens. A query tile
at tile coordinates ``(a, b, c)`` visits the key tiles inside a window of ``window = (wf, wh, ww)`` tiles around it,
clamped inward at the borders (every query tile visits exactly ``wf * wh * ww`` key tiles, like NATTEN windows).
With an optional ``stride`` (in tiles, GNA-style), consecutive query tiles of a stride group share the window of
their group's centre. Per dimension of ``T`` tiles, query tile coordinate ``a``, window ``w`` and stride ``s``:
``leader = min((a // s) * s + (s - 1) // 2, T - 1)``, ``start = clamp(leader - w // 2, 0, T - w)``, and key tile
coordinate ``a'`` is visited iff ``start <= a' < start + w``. (Query tiles with identical rows that are consecutive
in tile-major order, i.e. a width stride, are attended in one kernel call on the CPU path.)
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

__all__ = [
    "fit_tile",
    "tile_block_mask",
    "tile_grid",
    "tile_permutation",
    "tile_window_for_density",
]

_DIMS = ("frames", "height", "width")


def tile_grid(grid: tuple[int, int, int], tile: tuple[int, int, int]) -> tuple[int, int, int]:
    """Number of tiles per dimension; ``ValueError`` naming the dimension when ``tile`` does not divide ``grid``."""
    bad = [f"{name} {g} % {t} = {g % t}" for name, g, t in zip(_DIMS, grid, tile) if g % t]
    if bad:
        raise ValueError(
            f"tile={tuple(tile)} does not divide the token grid {tuple(grid)} (frames, height, width): "
            f"{', '.join(bad)}. Choose a tile whose entries divide each grid dimension, or set tile_fit='shrink' to "
            "use the largest dividing tile no larger than the requested one."
        )
    return tuple(g // t for g, t in zip(grid, tile))


def fit_tile(grid: tuple[int, int, int], tile: tuple[int, int, int]) -> tuple[int, int, int]:
    """Per dimension, the largest divisor of the grid size that is ``<=`` the requested tile size."""
    out = []
    for g, t in zip(grid, tile):
        t = min(t, g)
        while g % t:
            t -= 1
        out.append(t)
    return tuple(out)


def tile_permutation(grid: tuple[int, int, int], tile: tuple[int, int, int], device=None) -> Tensor:
    """``perm (N,)``: the tile-major sequence is ``x[..., perm, :]`` for row-major image tokens ``x``.

    Order: tile ``(a, b, c)`` row-major over the tile grid, then the tokens inside the tile row-major.
    """
    (f, h, w), (tf, th, tw) = grid, tile
    tg = tile_grid(grid, tile)
    idx = torch.arange(f * h * w, device=device).view(tg[0], tf, tg[1], th, tg[2], tw)
    return idx.permute(0, 2, 4, 1, 3, 5).reshape(-1)


def _window_bounds(coord: Tensor, length: int, w: int, s: int = 1) -> tuple[Tensor, Tensor]:
    leader = torch.clamp((coord // s) * s + (s - 1) // 2, max=length - 1)
    start = torch.clamp(leader - w // 2, min=0).clamp(max=length - w)
    return start, start + w


def tile_block_mask(
    tiles: tuple[int, int, int],
    window: tuple[int, int, int],
    device=None,
    stride: tuple[int, int, int] = (1, 1, 1),
) -> Tensor:
    """Bool ``(T, T)`` block mask over the tile-major sequence (``T = prod(tiles)``, one block per tile).

    ``window`` entries must lie in ``[1, tiles[d]]``; ``stride`` entries in ``[1, window[d]]``.
    """
    for name, t, w, s in zip(_DIMS, tiles, window, stride):
        if not 1 <= w <= t:
            raise ValueError(f"window {tuple(window)}: the {name} window {w} must lie in [1, {t}] tiles.")
        if not 1 <= s <= w:
            raise ValueError(f"stride {tuple(stride)}: the {name} stride {s} must lie in [1, window {w}] tiles.")
    coords = torch.stack(
        torch.meshgrid(*(torch.arange(t, device=device) for t in tiles), indexing="ij"), -1
    ).view(-1, 3)
    mask = torch.ones(coords.shape[0], coords.shape[0], dtype=torch.bool, device=device)
    for d in range(3):
        start, end = _window_bounds(coords[:, d], tiles[d], window[d], stride[d])
        kd = coords[:, d]
        mask &= (kd[None, :] >= start[:, None]) & (kd[None, :] < end[:, None])
    return mask


def tile_window_for_density(
    tiles: tuple[int, int, int], density: float, tile: tuple[int, int, int] = (1, 1, 1)
) -> tuple[int, int, int]:
    """The window (in tiles) whose image density ``prod(window) / prod(tiles)`` is closest to ``density``.

    Candidates per dimension are the odd sizes (symmetric windows) and the full length; among windows of similar
    density the one whose extent in tokens (``window * tile``) is most balanced over the three dimensions wins.
    """
    total = math.prod(tiles)
    cands = [sorted({w for w in range(1, t + 1, 2)} | {t}) for t in tiles]
    best, best_cost = (1, 1, 1), math.inf
    for win in itertools.product(*cands):
        d = math.prod(win) / total
        ext = [w * s for w, s in zip(win, tile)]
        # Over-shooting the target costs more than under-shooting it (the target is a budget).
        gap = math.log(d / density)
        cost = (2.0 * gap if gap > 0 else -gap) + 0.15 * math.log(max(ext) / min(ext))
        if cost < best_cost - 1e-12:
            best, best_cost = win, cost
    return best
