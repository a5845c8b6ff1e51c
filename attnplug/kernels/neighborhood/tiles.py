"""The ``tiles`` path of neighbourhood attention (CPU and any device without the Triton kernel).

The grid's queries are cut into tiles (per dimension, runs of consecutive positions of one dilation residue class);
each tile attends to the union of its queries' windows (its gathered candidate keys, plus every global/text key) with
one batched ``F.scaled_dot_product_attention`` per chunk of tiles and an element mask where the union is larger than
a query's window. The tile shape comes from a cost model (:func:`default_tile`). Plans are cached per parameters and
device (bounded); gather buffers are per thread.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...layout import TokenLayout
from .._cache import BoundedCache
from ..block_sparse.masks import dim_window
from .params import ResolvedNeighborhood

__all__ = ["GATHER_COST", "TilePlan", "default_tile", "tile_plan", "tiles_attention"]

Triple = tuple[int, int, int]

#: Relative cost of gathering one key (or query) row vs one (query, key) score in the tile cost model. Fitted on one
#: 2-core x86 CPU with nothing else running (80 tilings of 11 cases of ``benchmarks/neighborhood_bench.py``, least
#: squares on relative error: 6.2 ns per score with or without an element mask, 0.17 us per gathered token-major row,
#: at 4 heads x 64); with 30 the chosen tile was within 2 % of the fastest measured in every case. Other CPUs may
#: prefer another value: assign ``attnplug.kernels.neighborhood.tiles.GATHER_COST`` before the first call (plans are
#: cached) or pass ``tile=`` explicitly.
GATHER_COST = 30.0

#: Bound of the plan caches (entries; one per distinct grid/parameters/device).
CACHE_ENTRIES = 64

_TILE_CACHE = BoundedCache(CACHE_ENTRIES)  # res -> default tile
_PLAN_CACHE = BoundedCache(CACHE_ENTRIES)  # (res, tile, device) -> TilePlan
_MASK_CACHE = BoundedCache(CACHE_ENTRIES)  # (res, tile, device, dtype, text) -> additive mask


def _dim_tiles(n: int, k: int, d: int, s: int, c: bool, tile: int):
    """Query tiles of one dimension: ``(q_coords, k_coords, mask)`` padded to tensors.

    Coordinates of one dilation residue class are cut into runs of ``tile`` consecutive group positions; the keys of
    a tile are the union of its queries' windows (contiguous in the residue class), ``mask[t, i, j]`` says whether
    query ``i`` of tile ``t`` sees key ``j``. Returns ``q (T, Tq)``, ``kc (T, Tk)`` (-1 = padding) and ``mask (T, Tq,
    Tk)``.
    """
    i = torch.arange(n)
    r, start, end = dim_window(i, n, k, d, s, c)
    tiles = []
    for res in range(min(d, n)):
        members = i[r == res]  # ascending coordinates of this residue class
        st, en = start[r == res], end[r == res]
        for a0 in range(0, len(members), tile):
            qc = members[a0:a0 + tile]
            lo, hi = int(st[a0:a0 + tile].min()), int(en[a0:a0 + tile].max())
            kc = res + d * torch.arange(lo, hi)
            jj = torch.arange(lo, hi)
            m = (jj[None, :] >= st[a0:a0 + tile, None]) & (jj[None, :] < en[a0:a0 + tile, None])
            tiles.append((qc, kc, m))
    tq, tk = max(len(t[0]) for t in tiles), max(len(t[1]) for t in tiles)
    q_idx = torch.full((len(tiles), tq), -1, dtype=torch.long)
    k_idx = torch.full((len(tiles), tk), -1, dtype=torch.long)
    mask = torch.zeros(len(tiles), tq, tk, dtype=torch.bool)
    for t, (qc, kc, m) in enumerate(tiles):
        q_idx[t, : len(qc)] = qc
        k_idx[t, : len(kc)] = kc
        mask[t, : len(qc), : len(kc)] = m
    return q_idx, k_idx, mask


@dataclass(frozen=True, eq=False)
class TilePlan:
    """Gather plan of the ``tiles`` path: ``G`` query tiles of ``Sq`` queries, each with ``Sk`` candidate keys.

    ``q_index (G, Sq)`` / ``k_index (G, Sk)``: token indices in the grid (-1 = padding); ``mask (G, Sq, Sk)`` or None
    when every valid query sees every valid key of its tile (strided/blocked windows) and nothing is padded (CPU).
    ``q_dest (G*Sq,)``: destination rows of the queries (padded slots point at the extra row ``N``, so one
    ``index_copy_`` into an ``N + 1`` buffer scatters the output); ``k_gather (G, Sk)``: key rows (padding clamped
    to 0; those keys are masked); both on the plan's device. Immutable once built (shared by threads).
    """

    q_index: torch.Tensor
    k_index: torch.Tensor
    mask: torch.Tensor | None
    tile: Triple
    q_dest: torch.Tensor
    k_gather: torch.Tensor

    @property
    def visited_pairs(self) -> int:
        """Scores computed per (batch, head), padding included."""
        return int(self.q_index.shape[0] * self.q_index.shape[1] * self.k_index.shape[1])


def _tile_candidates(n: int, k: int, s: int, full: bool) -> list[int]:
    if full:
        return [n]
    if s > 1:
        return sorted({min(n, s * m) for m in range(1, max(1, 32 // s) + 1)})
    return sorted({min(n, t) for t in (1, 2, 4, 8, 12, 16, 24, 32)})


def _best_tile(res: ResolvedNeighborhood) -> Triple:
    per_dim = []
    for n, k, d, s, c, full in zip(res.grid, res.kernel_size, res.dilation, res.stride, res.is_causal, res.full):
        options = []
        for t in _tile_candidates(n, k, s, full):
            q_idx, k_idx, _ = _dim_tiles(n, k, d, s, c, t)
            options.append((t, q_idx.shape[0], q_idx.shape[1], k_idx.shape[1]))  # tile, count, Tq, Tk
        per_dim.append(options)
    best, best_cost = None, math.inf
    for a in per_dim[0]:
        for b in per_dim[1]:
            for c_ in per_dim[2]:
                g, sq, sk = a[1] * b[1] * c_[1], a[2] * b[2] * c_[2], a[3] * b[3] * c_[3]
                cost = g * sq * sk + GATHER_COST * g * (sq + sk)
                if cost < best_cost:
                    best, best_cost = (a[0], b[0], c_[0]), cost
    return best


def default_tile(res: ResolvedNeighborhood) -> Triple:
    """Queries per tile and dimension, minimising ``G * Sq * Sk + GATHER_COST * G * (Sq + Sk)`` (scores computed,
    padding included, plus rows gathered) over candidate tiles: whole numbers of stride groups for strided windows
    (a group shares one window), 1..32 positions for sliding windows. Larger tiles gather fewer duplicate keys but
    compute more masked-out scores (a tile's keys are the union of its queries' windows). Cached per ``res``."""
    return _TILE_CACHE.get_or_build(res, lambda: _best_tile(res))


def _build_plan(res: ResolvedNeighborhood, tile: Triple, device: torch.device) -> TilePlan:
    f, h, w = res.grid
    dims = [_dim_tiles(n, k, d, s, c, t) for n, k, d, s, c, t in zip(
        res.grid, res.kernel_size, res.dilation, res.stride, res.is_causal, tile)]
    (qf, kf, mf), (qy, ky, my), (qx, kx, mx) = dims
    nf, ny, nx = qf.shape[0], qy.shape[0], qx.shape[0]

    def combine(a, b, c_):  # (nf, Ta), (ny, Tb), (nx, Tc) -> flat indices (G, Ta*Tb*Tc), -1 where padded
        a_, b_, c2 = a[:, None, None, :, None, None], b[None, :, None, None, :, None], c_[None, None, :, None, None, :]
        idx = a_ * (h * w) + b_ * w + c2
        valid = (a_ >= 0) & (b_ >= 0) & (c2 >= 0)
        return torch.where(valid, idx, -1).reshape(nf * ny * nx, -1)

    q_index, k_index = combine(qf, qy, qx), combine(kf, ky, kx)
    mask = (mf[:, None, None, :, None, None, :, None, None] & my[None, :, None, None, :, None, None, :, None]
            & mx[None, None, :, None, None, :, None, None, :])
    mask = mask.reshape(q_index.shape[0], q_index.shape[1], k_index.shape[1])
    k_valid = (k_index >= 0)[:, None, :]
    q_pad = (q_index < 0)[:, :, None]
    mask = (mask & k_valid) | (q_pad & k_valid)  # padded query rows see the valid keys (no NaN; dropped later)
    if bool((mask == k_valid).all()) and bool(k_valid.all()):
        mask = None
    q = q_index.reshape(-1)
    q_dest = torch.where(q >= 0, q, f * h * w)
    k_gather = k_index.clamp(min=0)
    return TilePlan(q_index, k_index, mask, tuple(tile), q_dest.to(device), k_gather.to(device))


def tile_plan(res: ResolvedNeighborhood, tile: Triple | None = None, device: torch.device | str = "cpu") -> TilePlan:
    """The (cached, per device) :class:`TilePlan` of ``res``; ``tile`` defaults to :func:`default_tile`."""
    tile = tuple(tile) if tile is not None else default_tile(res)
    device = torch.device(device)
    return _PLAN_CACHE.get_or_build((res, tile, str(device)), lambda: _build_plan(res, tile, device))


def _additive_mask(plan: TilePlan, res: ResolvedNeighborhood, dtype: torch.dtype, device: torch.device,
                   text_tokens: int) -> torch.Tensor | None:
    """The plan's mask as an additive ``(G, 1, Sq, Sk + text_tokens)`` float mask (0 / -inf; text columns 0), cached:
    SDPA on the CPU would otherwise convert the boolean mask on every call."""
    if plan.mask is None:
        return None

    def build():
        m = torch.zeros(plan.mask.shape, dtype=dtype).masked_fill_(~plan.mask, float("-inf"))
        if text_tokens:
            m = torch.cat([m, m.new_zeros(m.shape[0], m.shape[1], text_tokens)], dim=2)
        return m[:, None].to(device)

    return _MASK_CACHE.get_or_build((res, plan.tile, str(device), dtype, text_tokens), build)


_SCRATCH = threading.local()


def _scratch_buffer(slot: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A reusable buffer of ``shape`` owned by the calling thread (CPU only). Gathering into a fresh tensor of tens of
    MB costs page faults on every call (30 ms vs 3 ms for 100k gathered 1 KB rows, measured on a 2-core CPU)."""
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = {}
    numel = math.prod(shape)
    buf = buffers.get((slot, like.dtype))
    if buf is None or buf.numel() < numel:
        buf = buffers[(slot, like.dtype)] = torch.empty(numel, dtype=like.dtype)
    return buf[:numel].view(shape)


def _token_major(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, N, D)`` -> a contiguous ``(B, N, H, D)`` (free for diffusers' usual transposed views)."""
    xt = x.transpose(1, 2)
    return xt if xt.is_contiguous() else xt.contiguous()


def tiles_attention(q, k, v, layout: TokenLayout, res: ResolvedNeighborhood, scale: float | None = None, *,
                    tile: Triple | None = None, max_elements: int = 1 << 23) -> torch.Tensor:
    """Neighbourhood attention by gathered query tiles; text/global tokens attend densely. ``(B, H, N, D)`` in and out.

    ``q`` has ``layout.num_tokens`` rows, or only ``layout.image_tokens`` (grid queries only; the layout's text tokens
    are then extra keys and must come last); ``k, v`` have ``layout.num_tokens`` rows.

    Rows are gathered token-major (``(B, N, H, D)``, one contiguous ``H * D`` row per token, the layout diffusers'
    processors already hold) into per-thread buffers reused between calls on the CPU (at most ``2 * max_elements``
    elements each, 64 MB in float32); SDPA reads them through strided views.
    """
    grid_only = q.shape[-2] != layout.num_tokens
    if grid_only and layout.text_first:
        raise ValueError("tiles_attention: grid-only queries need the extra (text) tokens last.")
    b, h, _, d = q.shape
    device = q.device
    plan = tile_plan(res, tile, device)
    t = layout.text_tokens
    offset = layout.image_slice().start
    q_dest = plan.q_dest
    g_total, sq = plan.q_index.shape
    sk = plan.k_index.shape[1]
    k_index = plan.k_gather + offset
    if t:
        text_pos = torch.arange(layout.text_slice().start, layout.text_slice().stop, device=device)
        k_index = torch.cat([k_index, text_pos.expand(g_total, t)], dim=1)
    skt = sk + t
    q_src = q_dest.clamp(max=layout.image_tokens - 1) + (0 if grid_only else offset)
    mask = _additive_mask(plan, res, q.dtype, device, t)
    qt, kt, vt = _token_major(q), _token_major(k), _token_major(v)
    out = q.new_empty(b, layout.image_tokens + 1, h, d)  # row N collects the padded query slots
    chunk = max(1, min(g_total, max_elements // max(1, b * h * (skt + sq) * d)))
    reuse = device.type == "cpu"
    for g0 in range(0, g_total, chunk):
        g = min(chunk, g_total - g0)
        qi, ki = q_src[g0 * sq:(g0 + g) * sq], k_index[g0:g0 + g].reshape(-1)
        if reuse:
            qg = torch.index_select(qt, 1, qi, out=_scratch_buffer(0, (b, g * sq, h, d), q))
            kg = torch.index_select(kt, 1, ki, out=_scratch_buffer(1, (b, g * skt, h, d), k))
            vg = torch.index_select(vt, 1, ki, out=_scratch_buffer(2, (b, g * skt, h, d), v))
        else:
            qg, kg, vg = qt.index_select(1, qi), kt.index_select(1, ki), vt.index_select(1, ki)
        # (B, G*S, H, D) -> (B*G, H, S, D) views; a 4-D mask keeps CPU SDPA on its flash path.
        qg, kg, vg = (x.view(b * g, -1, h, d).transpose(1, 2) for x in (qg, kg, vg))
        m = None
        if mask is not None:
            m = mask[g0:g0 + g]
            m = m if b == 1 else m.expand(b, *m.shape).reshape(b * g, *m.shape[1:])
        o = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=m, scale=scale)  # (B*G, H, Sq, D)
        out.index_copy_(1, q_dest[g0 * sq:(g0 + g) * sq], o.transpose(1, 2).reshape(b, g * sq, h, d))
    out_img = out[:, : layout.image_tokens].transpose(1, 2)
    if not t or grid_only:
        return out_img
    _, q_txt = layout.split(q)
    out_txt = F.scaled_dot_product_attention(q_txt, k, v, scale=scale)
    return layout.merge(out_img, out_txt)
