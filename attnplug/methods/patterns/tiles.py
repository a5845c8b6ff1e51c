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

The tile never depends on the kernel's block size. With ``tile_fit="pad"`` (the default) the grid is padded up to a
multiple of the tile, as STA does: the tile grid has ``ceil(grid / tile)`` tiles per dimension and every tile
becomes one kernel block of ``slots`` positions (the tile volume, rounded up to a multiple of 16 for the GPU kernels),
positions that hold no token are padding: left out as keys (the kernel's ``kv_keep``) and dropped as queries. The
result is exact sliding tile attention with the requested tile on any grid. ``tile_fit="shrink"`` instead reduces each
tile entry to the largest divisor of its grid dimension that is no larger (:func:`fit_tile`; logged at WARNING when
it changes the tile), and ``"error"`` refuses a tile that does not divide the grid. A tile entry larger than its grid
dimension is cut to the dimension (one tile spans it either way).
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
from .base import ConfiguredPattern, PatternOutput, Plan, run_static
from .common import add_global_blocks, lut_from_block_mask

__all__ = [
    "TilesPattern",
    "fit_tile",
    "padded_tile_order",
    "tile_block_mask",
    "tile_grid",
    "tile_permutation",
    "tile_slots",
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


def tile_slots(volume: int, device_kernel: bool, threshold: bool) -> int:
    """Kernel block (positions per tile) for a tile of ``volume`` tokens: the volume itself on the CPU path, else
    the next multiple of 16 (the next power of two >= 16 with threshold skipping, whose tiles equal the blocks)."""
    if not device_kernel:
        return volume
    if threshold:
        return max(16, 1 << (volume - 1).bit_length())
    return 16 * math.ceil(volume / 16)


def padded_tile_order(grid: tuple[int, int, int], tile: tuple[int, int, int], slots: int,
                      n_text: int) -> tuple[Tensor, Tensor, Tensor, tuple[int, int, int]]:
    """Where each token goes in the padded tile-major order.

    Tile ``(a, b, c)`` of the tile grid ``ceil(grid / tile)`` (row-major) owns positions ``[t * slots, (t + 1) *
    slots)``; inside it the tile's tokens are row-major; the text tokens follow all tiles.

    Returns:
        ``(src (N_p,), pos (N,), keep (N_p,), tiles)``: ``src`` gathers the text-last sequence into the order (0 at
        positions holding no token), ``pos`` is each token's position, ``keep`` is False at those empty positions.
    """
    tiles = tuple(math.ceil(g / t) for g, t in zip(grid, tile))
    f, h, w = (torch.arange(g) for g in grid)
    (tf, th, tw), (_, nh, nw) = tile, tiles
    tile_id = ((f // tf)[:, None, None] * nh + (h // th)[None, :, None]) * nw + (w // tw)[None, None, :]
    inner = ((f % tf)[:, None, None] * th + (h % th)[None, :, None]) * tw + (w % tw)[None, None, :]
    n_slots = math.prod(tiles) * slots
    pos = torch.cat([(tile_id * slots + inner).reshape(-1), n_slots + torch.arange(n_text)])
    src = torch.zeros(n_slots + n_text, dtype=torch.long)
    src[pos] = torch.arange(pos.numel())
    keep = torch.zeros(n_slots + n_text, dtype=torch.bool)
    keep[pos] = True
    return src, pos, keep, tiles


def tile_major_order(grid: tuple[int, int, int], config) -> tuple[Tensor | None, tuple[int, int, int] | None]:
    """Image-token order for ``topk`` / ``threshold``: ``(perm (N_img,), tile)`` tile-major with the config's tile
    (shrunk to a dividing one unless ``tile_fit="error"``: here the tile only orders tokens for locality), or
    ``(None, None)`` (row-major) when ``reorder`` is off or the tile does not divide the grid."""
    if not config.reorder:
        return None, None
    tile = config.tile if config.tile_fit == "error" else fit_tile(grid, config.tile)
    if any(g % t for g, t in zip(grid, tile)):
        return None, None
    return tile_permutation(grid, tile), tile


class TilesPattern(ConfiguredPattern):
    """``pattern="tiles"``: sliding tile attention over the image tokens; text tokens global (see the module)."""

    name = "tiles"
    video_only = True

    def tile_for(self, grid: tuple[int, int, int]) -> tuple[int, int, int]:
        """The tile used on ``grid``: the config's (entries cut to the grid), shrunk with ``tile_fit="shrink"``;
        ``ValueError`` with ``"error"`` when it does not divide the grid."""
        if self.config.tile_fit == "error":
            tile_grid(grid, self.config.tile)  # raises, naming the dimension
            return self.config.tile
        tile = tuple(min(t, g) for t, g in zip(self.config.tile, grid))
        if self.config.tile_fit == "shrink":
            fitted = fit_tile(grid, tile)
            if fitted != tile:
                log_once(logger, logging.WARNING, f"sparse_video: tile {tile} shrunk to {fitted} for the grid {grid} "
                         "(tile_fit='shrink'); tile_fit='pad' keeps the tile")
            return fitted
        return tile

    def slots_for(self, grid: tuple[int, int, int], device) -> int:
        """Kernel block on ``grid`` for ``device``: the tile volume, rounded up for the GPU kernels."""
        from ...kernels.block_sparse import choose_backend

        backend = choose_backend(self.config.backend, torch.empty(0, device=device))[0]
        return tile_slots(math.prod(self.tile_for(grid)), backend in ("triton", "flex"),
                          self.config.effective_threshold is not None)

    def block_for(self, grid: tuple[int, int, int], device="cpu") -> int:
        """Tokens per kernel block on ``grid`` (the tile's slots); ``ValueError`` if the tile cannot fit."""
        return self.slots_for(grid, device)

    def plan(self, layout: TokenLayout, device) -> Plan:
        """Padded tile-major order, the ``(M, M)`` block mask (text blocks global) and its LUT on ``device``."""
        cfg = self.config
        n, n_img = layout.num_tokens, layout.image_tokens
        tile = self.tile_for(layout.grid)
        slots = self.slots_for(layout.grid, device)
        src, pos, keep, tiles = padded_tile_order(layout.grid, tile, slots, n - n_img)
        if cfg.window_tiles is not None:  # None entries: the whole dimension
            window = tuple(t if w is None else min(w, t) for w, t in zip(cfg.window_tiles, tiles))
        else:
            window = tile_window_for_density(tiles, cfg.density, tile)
        stride = tuple(min(s, w) for s, w in zip(cfg.stride_tiles, window))
        n_p = src.numel()
        t = math.prod(tiles)
        m = math.ceil(n_p / slots)
        mask = torch.zeros(m, m, dtype=torch.bool)
        mask[:t, :t] = tile_block_mask(tiles, window, stride=stride)
        mask = add_global_blocks(mask, t * slots, n_p, slots)
        priority = None
        if cfg.effective_threshold is not None:  # nearest tiles first (L1 distance in tile coordinates), text last
            c = torch.stack(torch.meshgrid(*(torch.arange(x) for x in tiles), indexing="ij"), -1).view(-1, 3)
            priority = torch.full((m, m), -1e6)
            priority[:t, :t] = -(c[:, None] - c[None, :]).abs().sum(-1).float()
        lut = lut_from_block_mask(mask[None, None], slots, None if priority is None else priority[None, None])
        real = torch.bincount(pos // slots, minlength=m).double()  # tokens per block
        density = float((mask.double() * real[:, None] * real[None, :]).sum()) / (n * n)
        padded = n_p != n
        identity = not padded and bool((src == torch.arange(n)).all())
        return Plan(
            layout=layout, block=slots, perm=None if identity else src.to(device),
            inv=None if identity else pos.to(device), keep=keep[None].to(device) if padded else None,
            lut=lut.to(device), mask=mask, density=density, covers_all=all(w >= x for w, x in zip(window, tiles)),
            details={"tile": tile, "window_tiles": window, "stride_tiles": stride, "tiles": tiles, "slots": slots,
                     "padded_positions": n_p - n},
        )

    def run(self, q: Tensor, k: Tensor, v: Tensor, plan: Plan, info: CallInfo, keep: Tensor | None = None
            ) -> PatternOutput:
        """One call on text-last ``q, k, v (B, H, N, D)`` with optional key padding ``keep (B, N)``."""
        return run_static(q, k, v, plan, info, self.config, keep)
