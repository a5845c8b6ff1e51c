"""Sliding tile attention (STA): 3D sliding windows that move tile by tile, so every block is full or empty.

Image tokens (row-major ``frames x height x width``) are permuted into *tile-major* order: the grid is cut into tiles
of ``tile = (tf, th, tw)`` tokens and each tile becomes one contiguous block of ``tf * th * tw`` tokens. A query tile
at tile coordinates ``(a, b, c)`` visits the key tiles inside a window of ``window = (wf, wh, ww)`` tiles around it,
clamped inward at the borders (every query tile visits exactly ``wf * wh * ww`` key tiles, like NATTEN windows).
With an optional ``stride`` (in tiles, GNA-style), consecutive query tiles of a stride group share the window of
their group's leader. The window bounds are NATTEN's, shared with the neighbourhood kernels
(:func:`attnplug.kernels.block_sparse.masks.dim_window` with dilation 1): per dimension of ``T`` tiles, query tile
coordinate ``a``, window ``w`` and stride ``s``, ``leader = min((a // s) * s + s // 2, T - 1)`` (the centre; the
right-hand one for even strides), ``start = clamp(leader - w // 2, 0, T - w)``, and key tile coordinate ``a'`` is
visited iff ``start <= a' < start + w``. (Query tiles with identical rows that are consecutive in tile-major order,
i.e. a width stride, are attended in one kernel call on the CPU path.)

A tile must divide the token grid. With ``tile_fit="shrink"`` (the default) each tile entry is reduced to the
largest divisor of its grid dimension that is no larger (:func:`fit_tile`): the result is exact sliding tile
attention with the smaller tile. Padding the grid would need the kernel to mask the padded keys, which it does not.
"""

from __future__ import annotations

import itertools
import logging
import math

import torch
from torch import Tensor

from ..._logging import log_once
from ...kernels.block_sparse.masks import dim_window
from ...layout import TokenLayout
from ..base import CallInfo
from .base import ConfiguredPattern, PatternOutput, Plan, full_permutation, pair_density, run_static
from .common import add_global_blocks, inverse_permutation, lut_from_block_mask

__all__ = [
    "TilesPattern",
    "fit_tile",
    "tile_block_mask",
    "tile_grid",
    "tile_permutation",
    "tile_major_order",
    "tile_window_for_density",
]

logger = logging.getLogger(__name__)

_DIMS = ("frames", "height", "width")


def tile_grid(grid: tuple[int, int, int], tile: tuple[int, int, int]) -> tuple[int, int, int]:
    """Number of tiles per dimension; ``ValueError`` naming the dimension when ``tile`` does not divide ``grid``."""
    bad = [f"{name} {g} % {t} = {g % t}" for name, g, t in zip(_DIMS, grid, tile) if g % t]
    if bad:
        raise ValueError(
            f"SparseVideoConfig.tile={tuple(tile)} does not divide the token grid {tuple(grid)} (frames, height, "
            f"width): {', '.join(bad)}. Choose a tile whose entries divide each grid dimension, or set "
            "tile_fit='shrink' (the default) to use the largest dividing tile no larger than the requested one."
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
        _, start, end = dim_window(coords[:, d], tiles[d], kernel=window[d], dilation=1, stride=stride[d],
                                   causal=False)
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


def tile_major_order(grid: tuple[int, int, int], config) -> tuple[Tensor | None, tuple[int, int, int] | None]:
    """Image-token order for ``topk`` / ``threshold``: ``(perm (N_img,), tile)`` tile-major with the config's tile
    (fitted with ``tile_fit="shrink"``), or ``(None, None)`` (row-major) when ``reorder`` is off or it does not
    divide the grid."""
    if not config.reorder:
        return None, None
    tile = fit_tile(grid, config.tile) if config.tile_fit == "shrink" else config.tile
    if any(g % t for g, t in zip(grid, tile)):
        return None, None
    return tile_permutation(grid, tile), tile


class TilesPattern(ConfiguredPattern):
    """``pattern="tiles"``: sliding tile attention over the image tokens; text tokens global (see the module)."""

    name = "tiles"
    video_only = True

    def tile_for(self, grid: tuple[int, int, int]) -> tuple[int, int, int]:
        """The tile used on ``grid``: the config's, fitted with ``tile_fit="shrink"``; ``ValueError`` otherwise."""
        tile = self.config.tile
        if self.config.tile_fit == "shrink":
            fitted = fit_tile(grid, tile)
            if fitted != tile:
                log_once(logger, logging.INFO, f"sparse_video: tile {tile} shrunk to {fitted} for the grid {grid}")
            return fitted
        tile_grid(grid, tile)  # raises, naming the dimension
        return tile

    def block_for(self, grid: tuple[int, int, int]) -> int:
        """Tokens per block on ``grid`` (the fitted tile's volume); ``ValueError`` if the tile cannot fit."""
        return math.prod(self.tile_for(grid))

    def plan(self, layout: TokenLayout, device) -> Plan:
        """Tile-major permutation, the ``(M, M)`` block mask (text blocks global) and its LUT on ``device``."""
        cfg = self.config
        n, n_img = layout.num_tokens, layout.image_tokens
        tile = self.tile_for(layout.grid)
        tiles = tile_grid(layout.grid, tile)
        if cfg.window is not None:  # None entries: the whole dimension
            window = tuple(t if w is None else min(w, t) for w, t in zip(cfg.window, tiles))
        else:
            window = tile_window_for_density(tiles, cfg.density, tile)
        stride = tuple(min(s, w) for s, w in zip(cfg.stride, window))
        block = math.prod(tile)
        m = math.ceil(n / block)
        t = math.prod(tiles)
        mask = torch.zeros(m, m, dtype=torch.bool)
        mask[:t, :t] = tile_block_mask(tiles, window, stride=stride)
        mask = add_global_blocks(mask, n_img, n, block)
        priority = None
        if cfg.effective_threshold is not None:  # nearest tiles first (L1 distance in tile coordinates), text last
            c = torch.stack(torch.meshgrid(*(torch.arange(x) for x in tiles), indexing="ij"), -1).view(-1, 3)
            priority = torch.full((m, m), -1e6)
            priority[:t, :t] = -(c[:, None] - c[None, :]).abs().sum(-1).float()
        perm = full_permutation(tile_permutation(layout.grid, tile), n)
        lut = lut_from_block_mask(mask[None, None], block, None if priority is None else priority[None, None])
        return Plan(
            layout=layout, block=block, perm=perm.to(device), inv=inverse_permutation(perm).to(device),
            lut=lut.to(device), mask=mask, density=pair_density(mask, n, block),
            covers_all=all(w >= x for w, x in zip(window, tiles)),
            details={"tile": tile, "window": window, "stride": stride, "tiles": tiles},
        )

    def run(self, q: Tensor, k: Tensor, v: Tensor, plan: Plan, info: CallInfo) -> PatternOutput:
        """One call on text-last ``q, k, v (B, H, N, D)``."""
        return run_static(q, k, v, plan, info, self.config)
