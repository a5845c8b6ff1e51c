"""Neighborhood attention (NATTEN / GNA semantics) over the token grid, on the block-sparse kernel.

Every image query attends to a window of ``kernel_size`` neighbours per dimension of the ``(frames, height, width)``
grid; windows are clamped inside the grid ("inward" windows: every query sees exactly ``kernel_size`` positions per
dimension, which is FreeSwim's inward sliding window). Per dimension:

- ``dilation`` ``d``: a query only sees keys of its own residue class ``i % d`` (NATTEN dilation);
- ``is_causal``: the window ends at the query (``kernel`` positions up to and including it), e.g. causal over frames;
- ``stride`` ``s`` (GNA): ``s`` consecutive queries share the window of their group's centre; ``1`` is the sliding
  window, ``s = kernel`` blocked (Swin-style, non-overlapping) windows, in between strided windows.

Text tokens of joint attention (SD3, Flux, CogVideoX, HunyuanVideo) stay global: they attend to every token and
every token attends to them. The method moves them last (:meth:`TokenLayout.to_text_last`), where the kernel treats
tokens past the grid as global.

A kernel dimension at least as long as the grid is *full* (unrestricted). The method clamps such dimensions (so one
config serves every U-Net level); the functional :func:`neighborhood_attention` is strict like NATTEN and raises
instead. When every dimension is full the call is plain SDPA (fast path, logged at debug).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .._logging import log_once
from ..config import MethodConfig, help_field
from ..kernels import BlockLUT, NeighborhoodMask, block_sparse_attention
from ..kernels.block_sparse.masks import dim_window
from ..layout import TokenLayout
from ..processors.wrapper import AttnplugProcessor
from .base import AttentionMethod, CallInfo

logger = logging.getLogger(__name__)

DIM_NAMES = ("frames", "height", "width")
NEIGHBORHOOD_BACKENDS = ("auto", "tiles", "triton", "torch", "reference")

Triple = tuple[int, int, int]


# --------------------------------------------------------------------------------------------------------------
# Argument normalisation and validation


def _int_triple(value, name: str, owner: str, *, allow_none: bool = False) -> tuple:
    """``int`` -> the same value for (frames, height, width); a 2-tuple is (height, width) with frames unrestricted
    (``None``, only where ``allow_none``); a 3-tuple is (frames, height, width)."""
    if isinstance(value, bool):
        raise TypeError(f"{owner}.{name} must be an int or a tuple of ints, got {value!r}.")
    if isinstance(value, int):
        out = (value, value, value)
    elif isinstance(value, (tuple, list)) and len(value) in (2, 3):
        out = tuple(value)
        if len(out) == 2:
            if not allow_none:
                out = (1, *out)
            else:
                out = (None, *out)
    else:
        raise ValueError(
            f"{owner}.{name} must be an int or a tuple of 2 (height, width) or 3 (frames, height, width) values, "
            f"got {value!r}."
        )
    for dim, v in enumerate(out):
        if v is None and allow_none:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{owner}.{name} entries must be ints{' or None' if allow_none else ''}, got {value!r}.")
        if v < 1:
            raise ValueError(f"{owner}.{name} for {DIM_NAMES[dim]} must be >= 1, got {v} (in {value!r}).")
    return out


def _bool_triple(value, name: str, owner: str) -> tuple[bool, bool, bool]:
    if isinstance(value, bool):
        return (value, value, value)
    if isinstance(value, (tuple, list)) and len(value) in (2, 3) and all(isinstance(v, bool) for v in value):
        return tuple(value) if len(value) == 3 else (False, *value)
    raise ValueError(
        f"{owner}.{name} must be a bool or a tuple of 2 (height, width) or 3 (frames, height, width) bools, "
        f"got {value!r}."
    )


def _check_params(kernel, dilation, stride, causal, owner: str) -> None:
    """Grid-independent checks: odd kernels where non-causal, stride <= kernel."""
    for dim in range(3):
        k, d, s, c = kernel[dim], dilation[dim], stride[dim], causal[dim]
        name = DIM_NAMES[dim]
        if k is None:
            if s != 1 or d != 1:
                raise ValueError(
                    f"{owner}: the {name} dimension is unrestricted (kernel None) so its stride and dilation must be "
                    f"1, got stride {s} and dilation {d}."
                )
            continue
        if not c and k % 2 == 0:
            raise ValueError(
                f"{owner}.kernel_size for {name} is {k}, but a non-causal neighbourhood needs an odd kernel size "
                f"(e.g. {k - 1} or {k + 1}); even sizes are accepted only for causal dimensions."
            )
        if s > k:
            raise ValueError(f"{owner}.stride for {name} is {s}, larger than its kernel size {k}; it must be <= {k}.")


@dataclass(frozen=True)
class ResolvedNeighborhood:
    """Per-call neighbourhood parameters for one grid (all triples over (frames, height, width))."""

    grid: Triple
    kernel_size: Triple
    dilation: Triple
    stride: Triple
    is_causal: tuple[bool, bool, bool]

    @property
    def full(self) -> tuple[bool, bool, bool]:
        """Per dimension: whether the window covers the whole grid length (no restriction)."""
        return tuple(
            (not c and k >= n and d == 1) or n == 1
            for n, k, d, c in zip(self.grid, self.kernel_size, self.dilation, self.is_causal)
        )

    @property
    def is_dense(self) -> bool:
        return all(self.full)

    def density(self) -> float:
        """Fraction of (image query, image key) pairs allowed (exact for non-causal; causal counted exactly too)."""
        frac = 1.0
        for n, k, d, c in zip(self.grid, self.kernel_size, self.dilation, self.is_causal):
            if c:
                # query at a sees min(a+1, k) keys within its dilation group; averaged over the group
                total = 0
                for r in range(min(d, n)):
                    lr = (n - r + d - 1) // d
                    total += sum(min(a + 1, k) for a in range(lr))
                frac *= total / (n * n)
            else:
                frac *= min(k, n) / n
        return frac

    def mask(self) -> NeighborhoodMask:
        """The kernel's :class:`NeighborhoodMask` for these parameters."""
        return _make_mask(self.grid, self.kernel_size, self.dilation, self.is_causal, self.stride)


def _make_mask(grid, kernel, dilation, causal, stride) -> NeighborhoodMask:
    """``NeighborhoodMask``; a full non-causal dimension of even length ``L`` is expressed as kernel ``L``.

    The kernel's formula gives exactly the whole dimension for ``kernel == L`` whatever its parity (``start =
    clamp(a - L // 2, 0, 0) = 0``, ``end = L``), but ``NeighborhoodMask`` validation only accepts odd non-causal
    kernels. For that one case the validated constructor is bypassed (the values are checked here instead).
    """
    kernel, dilation, causal, stride = tuple(kernel), tuple(dilation), tuple(causal), tuple(stride)
    even_full = any(not c and k == n and k % 2 == 0 for n, k, c in zip(grid, kernel, causal))
    if not even_full:
        return NeighborhoodMask(grid=tuple(grid), kernel_size=kernel, dilation=dilation, is_causal=causal,
                                stride=stride)
    for n, k, d, s in zip(grid, kernel, dilation, stride):
        if not (1 <= k <= n and d >= 1 and k * d <= n and 1 <= s <= k):
            raise ValueError(f"Internal neighbourhood parameters out of range: grid {grid}, kernel {kernel}.")
    m = object.__new__(NeighborhoodMask)
    for field_name, value in (("grid", tuple(grid)), ("kernel_size", kernel), ("dilation", dilation),
                              ("is_causal", causal), ("stride", stride)):
        object.__setattr__(m, field_name, value)
    return m


def resolve_neighborhood(
    grid: Triple,
    kernel_size,
    dilation=1,
    stride=1,
    is_causal=False,
    *,
    clamp: bool = True,
    owner: str = "neighborhood_attention",
) -> ResolvedNeighborhood:
    """Neighbourhood parameters for ``grid`` = ``(frames, height, width)``.

    ``clamp=True`` (the method): a kernel at least as long as a non-causal dimension makes that dimension full; a
    causal kernel is cut to the length; ``kernel * dilation > length`` lowers the dilation to ``length // kernel``.
    ``clamp=False`` (strict, like NATTEN): those cases raise ``ValueError`` naming the dimension and the limit; only a
    dimension of length 1 or an unrestricted (``None``) kernel is full.
    """
    kernel = _int_triple(kernel_size, "kernel_size", owner, allow_none=True)
    dil = _int_triple(dilation, "dilation", owner)
    st = _int_triple(stride, "stride", owner)
    causal = _bool_triple(is_causal, "is_causal", owner)
    _check_params(kernel, dil, st, causal, owner)
    ks, ds, ss = [], [], []
    for dim, n in enumerate(grid):
        k, d, s, c = kernel[dim], dil[dim], st[dim], causal[dim]
        name = DIM_NAMES[dim]
        if k is None or n == 1:
            ks.append(n), ds.append(1), ss.append(1)
            continue
        if not clamp:
            if k > n:
                raise ValueError(
                    f"{owner}: kernel_size for {name} is {k}, larger than the grid's {name} length {n}; it must be "
                    f"<= {n}."
                )
            if k * d > n:
                raise ValueError(
                    f"{owner}: kernel_size * dilation for {name} is {k} * {d} = {k * d}, larger than the grid's "
                    f"{name} length {n}; it must be <= {n} (dilation <= {n // k})."
                )
        if k >= n:
            k, d, s = n, 1, (1 if not c else min(s, n))
        elif k * d > n:
            d = max(1, n // k)
        ks.append(k), ds.append(d), ss.append(min(s, k))
    return ResolvedNeighborhood(tuple(grid), tuple(ks), tuple(ds), tuple(ss), causal)


# --------------------------------------------------------------------------------------------------------------
# Functional op


_LUT_CACHE: dict[tuple, BlockLUT] = {}
_LUT_CACHE_MAX = 64


def neighborhood_lut(res: ResolvedNeighborhood, n: int, block_m: int, block_n: int, device) -> BlockLUT:
    """Exact block LUT of ``res`` for a sequence of ``n`` tokens (grid first, global tokens after), cached."""
    key = (res, n, block_m, block_n, str(device))
    lut = _LUT_CACHE.get(key)
    if lut is None:
        if len(_LUT_CACHE) >= _LUT_CACHE_MAX:
            _LUT_CACHE.pop(next(iter(_LUT_CACHE)))
        lut = _LUT_CACHE[key] = res.mask().block_lut(n, block_m, block_n, device=device)
    return lut


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
    when every valid query sees every valid key of its tile (strided/blocked windows) and nothing is padded.
    """

    q_index: torch.Tensor
    k_index: torch.Tensor
    mask: torch.Tensor | None
    tile: Triple

    @property
    def visited_pairs(self) -> int:
        return int(self.q_index.shape[0] * self.q_index.shape[1] * self.k_index.shape[1])

    def gather_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat ``(G*Sq,)`` destination indices of the queries (padded query slots point at the extra row ``N``, so
        one ``index_copy_`` into an ``N + 1`` buffer scatters the output) and ``(G*Sk,)`` key indices (padding
        clamped to 0; those keys are masked)."""
        cached = self.__dict__.get("_gather")
        if cached is None:
            q = self.q_index.reshape(-1)
            n = int(q.max()) + 1
            cached = (torch.where(q >= 0, q, n), self.k_index.reshape(-1).clamp(min=0))
            object.__setattr__(self, "_gather", cached)
        return cached

    def additive_mask(self, dtype: torch.dtype, device, text_tokens: int = 0) -> torch.Tensor | None:
        """``mask`` as an additive ``(G, 1, Sq, Sk + text_tokens)`` float mask (0 / -inf; text columns 0), cached per
        dtype, device and text count: SDPA on the CPU would otherwise convert the boolean mask on every call."""
        if self.mask is None:
            return None
        cache = self.__dict__.setdefault("_additive", {})
        key = (dtype, str(device), text_tokens)
        if key not in cache:
            m = torch.zeros(self.mask.shape, dtype=dtype).masked_fill_(~self.mask, float("-inf"))
            if text_tokens:
                m = torch.cat([m, m.new_zeros(m.shape[0], m.shape[1], text_tokens)], dim=2)
            cache[key] = m[:, None].to(device)
        return cache[key]


#: Relative cost of gathering one key (or query) row vs one (query, key) score in the tile cost model, fitted on the
#: project's 2-core CPU with nothing else running (80 tilings of 11 cases of ``benchmarks/neighborhood_bench.py``,
#: least squares on relative error: 6.2 ns per score with or without an element mask, 0.17 us per gathered
#: token-major row, at 4 heads x 64). With 30 the chosen tile is within 2 % of the fastest measured in every case.
GATHER_COST = 30.0


def _tile_candidates(n: int, k: int, s: int, full: bool) -> list[int]:
    if full:
        return [n]
    if s > 1:
        return sorted({min(n, s * m) for m in range(1, max(1, 32 // s) + 1)})
    return sorted({min(n, t) for t in (1, 2, 4, 8, 12, 16, 24, 32)})


@functools.lru_cache(maxsize=64)
def default_tile(res: ResolvedNeighborhood) -> Triple:
    """Queries per tile and dimension, minimising ``G * Sq * Sk + GATHER_COST * G * (Sq + Sk)`` (scores computed,
    padding included, plus rows gathered) over candidate tiles: whole numbers of stride groups for strided windows
    (a group shares one window), 1..32 positions for sliding windows. Larger tiles gather fewer duplicate keys but
    compute more masked-out scores (a tile's keys are the union of its queries' windows). Cached per ``res``."""
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


_TILE_CACHE: dict[tuple, TilePlan] = {}


def tile_plan(res: ResolvedNeighborhood, tile: Triple | None = None) -> TilePlan:
    """The (cached) :class:`TilePlan` of ``res`` on the CPU."""
    tile = tuple(tile) if tile is not None else default_tile(res)
    key = (res, tile)
    plan = _TILE_CACHE.get(key)
    if plan is not None:
        return plan
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
    plan = _TILE_CACHE[key] = TilePlan(q_index, k_index, mask, tile)
    if len(_TILE_CACHE) > _LUT_CACHE_MAX:
        _TILE_CACHE.pop(next(iter(_TILE_CACHE)))
    return plan


_scratch = threading.local()


def _scratch(slot: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A reusable per-thread buffer of ``shape`` (CPU only). Gathering into a fresh tensor of tens of MB costs
    page faults on every call: 30 ms vs 3 ms for 100k gathered 1 KB rows, measured on the project's CPU."""
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    numel = math.prod(shape)
    buf = buffers.get((slot, like.dtype))
    if buf is None or buf.numel() < numel:
        buf = buffers[(slot, like.dtype)] = torch.empty(numel, dtype=like.dtype)
    return buf[:numel].view(shape)


def _token_major(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, N, D)`` -> a contiguous ``(B, N, H, D)`` (free for diffusers' usual transposed views)."""
    xt = x.transpose(1, 2)
    return xt if xt.is_contiguous() else xt.contiguous()


def _tiles_attention(q, k, v, layout: TokenLayout, res: ResolvedNeighborhood, scale, tile: Triple | None = None,
                     max_elements: int = 1 << 23):
    """The ``tiles`` path: query tiles attend to their gathered candidate keys (+ all text keys) with one batched
    SDPA per chunk of tiles; text queries attend densely. ``(B, H, N, D)`` in and out.

    Rows are gathered token-major (``(B, N, H, D)``, one contiguous ``H * D`` row per token, the layout diffusers'
    processors already hold) into reusable per-thread buffers (on the CPU they stay allocated between calls: at most
    ``2 * max_elements`` elements, 64 MB in float32), and SDPA reads them through strided views."""
    plan = tile_plan(res, tile)
    b, h, n, d = q.shape
    device = q.device
    t = layout.text_tokens
    offset = layout.image_slice().start
    q_dest, k_index = (x.to(device) for x in plan.gather_indices())
    g_total, sq = plan.q_index.shape
    sk = plan.k_index.shape[1]
    k_index = k_index.view(g_total, sk) + offset
    if t:
        text_pos = torch.arange(layout.text_slice().start, layout.text_slice().stop, device=device)
        k_index = torch.cat([k_index, text_pos.expand(g_total, t)], dim=1)
    skt = sk + t
    q_src = q_dest.clamp(max=layout.image_tokens - 1) + offset
    mask = plan.additive_mask(q.dtype, device, t)
    qt, kt, vt = _token_major(q), _token_major(k), _token_major(v)
    out = q.new_empty(b, layout.image_tokens + 1, h, d)  # row N collects the padded query slots
    chunk = max(1, min(g_total, max_elements // max(1, b * h * (skt + sq) * d)))
    reuse = device.type == "cpu"
    for g0 in range(0, g_total, chunk):
        g = min(chunk, g_total - g0)
        qi, ki = q_src[g0 * sq:(g0 + g) * sq], k_index[g0:g0 + g].reshape(-1)
        if reuse:
            qg = torch.index_select(qt, 1, qi, out=_scratch(0, (b, g * sq, h, d), q))
            kg = torch.index_select(kt, 1, ki, out=_scratch(1, (b, g * skt, h, d), k))
            vg = torch.index_select(vt, 1, ki, out=_scratch(2, (b, g * skt, h, d), v))
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
    if not t:
        return out_img
    _, q_txt = layout.split(q)
    out_txt = F.scaled_dot_product_attention(q_txt, k, v, scale=scale)
    return layout.merge(out_img, out_txt)


def _attend(q, k, v, layout: TokenLayout, res: ResolvedNeighborhood, scale, backend: str, block: int):
    if res.is_dense:
        log_once(logger, logging.DEBUG, f"neighborhood: window covers the grid {layout.grid}; plain SDPA")
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if backend == "tiles" or (backend == "auto" and q.device.type != "cuda"):
        return _tiles_attention(q, k, v, layout, res, scale)
    q, k, v = (layout.to_text_last(x) for x in (q, k, v))
    lut = neighborhood_lut(res, q.shape[-2], block, block, q.device)
    out = block_sparse_attention(q, k, v, lut, neighborhood=res.mask(), scale=scale, backend=backend)
    return layout.from_text_last(out)


def neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: TokenLayout,
    kernel_size,
    dilation=1,
    stride=1,
    is_causal=False,
    *,
    scale: float | None = None,
    backend: str = "auto",
    block_size: int = 64,
) -> torch.Tensor:
    """Neighbourhood attention over ``layout``'s grid (strict NATTEN-style validation).

    Args:
        q, k, v: ``(B, H, N, D)`` with ``N = layout.num_tokens`` (text tokens, if any, are global).
        layout: the token layout (grid + text tokens, text first or last).
        kernel_size, dilation, stride, is_causal: int/bool (all dims) or tuples of 2 ``(height, width)`` or 3
            ``(frames, height, width)``; a kernel entry ``None`` leaves that dimension unrestricted.
        scale: softmax scale (default ``1 / sqrt(D)``).
        backend: ``auto`` (the ``tiles`` path off CUDA, the block-sparse kernel on CUDA), ``tiles`` (gathered query
            tiles + batched SDPA, see :func:`tile_plan`), or a block-sparse kernel backend: ``triton``, ``torch``,
            ``reference``.
        block_size: kernel block size in tokens (queries and keys).

    Returns:
        ``(B, H, N, D)``.

    Raises:
        ValueError: kernel larger than a dimension, ``kernel * dilation`` larger than a dimension, even non-causal
            kernels, non-positive values; the message names the dimension and the limit.
    """
    layout.check(q.shape[-2])
    res = resolve_neighborhood(layout.grid, kernel_size, dilation, stride, is_causal, clamp=False)
    return _attend(q, k, v, layout, res, scale, backend, block_size)


# --------------------------------------------------------------------------------------------------------------
# Config + method


@dataclass(frozen=True)
class NeighborhoodConfig(MethodConfig):
    """Neighbourhood attention (NATTEN/GNA semantics) over the (frames, height, width) token grid; text stays global.

    Sizes are an int (every dimension) or a tuple of 2 (height, width; frames unrestricted) or 3 (frames, height,
    width). Kernel dimensions at least as long as the grid are unrestricted; a window covering the whole grid runs
    plain SDPA.
    """

    name: ClassVar[str] = "neighborhood"
    kernel_size: int | tuple = help_field(
        (13, 13), "Window size per dimension: int, (height, width) or (frames, height, width); odd unless causal; "
        "None in a tuple = unrestricted dimension."
    )
    dilation: int | tuple = help_field(1, "Dilation per dimension (int or tuple like kernel_size).")
    stride: int | tuple = help_field(
        1, "GNA stride per dimension: 1 = sliding window, = kernel_size = blocked windows, in between = strided."
    )
    is_causal: bool | tuple = help_field(False, "Causal per dimension (e.g. (True, False, False): causal in frames).")
    scale_with_level: bool = help_field(
        False, "Divide the kernel by the layer's downsampling factor (U-Net levels below full resolution), so the "
        "window covers the same image area at every level."
    )
    backend: str = help_field(
        "auto", "auto (tiles off CUDA, block-sparse kernel on CUDA), tiles, or a kernel backend: triton, torch, "
        "reference."
    )
    block_size: int = help_field(64, "Kernel block size in tokens (queries and keys).")

    def __post_init__(self):
        owner = type(self).__name__
        kernel = _int_triple(self.kernel_size, "kernel_size", owner, allow_none=True)
        dil = _int_triple(self.dilation, "dilation", owner)
        st = _int_triple(self.stride, "stride", owner)
        causal = _bool_triple(self.is_causal, "is_causal", owner)
        _check_params(kernel, dil, st, causal, owner)
        if self.backend not in NEIGHBORHOOD_BACKENDS:
            raise ValueError(f"{owner}.backend must be one of {NEIGHBORHOOD_BACKENDS}, got {self.backend!r}.")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"{owner}.block_size must be a positive int, got {self.block_size!r}.")
        for name in ("kernel_size", "dilation", "stride", "is_causal"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    @classmethod
    def from_training_resolution(
        cls,
        train_grid: tuple[int, int] | tuple[int, int, int],
        *,
        family: str | None = None,
        **kwargs,
    ) -> NeighborhoodConfig:
        """A config whose window is the training-resolution token grid (FreeSwim's receptive-field rule).

        Args:
            train_grid: ``(height, width)`` or ``(frames, height, width)`` of the *token* grid the model was trained
                at (latent size divided by the patch size for DiTs; the latent size for U-Nets). Even sizes round up
                to the next odd kernel (a centred window of ``2 * (n // 2) + 1``); frames are unrestricted unless
                given.
            family: optional family name (``unet``, ``animatediff``, ``unet3d`` scale the window per U-Net level).
            **kwargs: other :class:`NeighborhoodConfig` fields.

        When generating at (or below) the training resolution the window covers the grid and attention is plain
        SDPA; above it every query sees a training-sized neighbourhood.
        """
        dims = _int_triple(tuple(train_grid), "train_grid", f"{cls.__name__}.from_training_resolution",
                           allow_none=True)
        kernel = tuple(None if n is None else 2 * (n // 2) + 1 for n in dims)
        if family in ("unet", "animatediff", "unet3d"):
            kwargs.setdefault("scale_with_level", True)
        return cls(kernel_size=kernel, **kwargs)

    def resolve(self, layout: TokenLayout, info: CallInfo | None = None) -> ResolvedNeighborhood:
        """Effective per-dimension parameters for one call's layout (kernels clamped to the grid)."""
        kernel = _int_triple(self.kernel_size, "kernel_size", type(self).__name__, allow_none=True)
        if self.scale_with_level and info is not None and info.latent_grid is not None:
            scaled = []
            for k, full, n in zip(kernel, info.latent_grid, layout.grid):
                factor = max(1, round(full / n)) if n else 1
                if k is None or factor == 1:
                    scaled.append(k)
                else:
                    kk = max(1, math.ceil(k / factor))
                    scaled.append(kk if kk % 2 else kk + 1)
            kernel = tuple(scaled)
        return resolve_neighborhood(layout.grid, kernel, self.dilation, self.stride, self.is_causal, clamp=True,
                                    owner=type(self).__name__)

    def build(self) -> NeighborhoodMethod:
        return NeighborhoodMethod(self)


class NeighborhoodMethod(AttentionMethod):
    """Neighbourhood attention on the block-sparse kernel; ``(B, H, N, D)`` in and out."""

    def __init__(self, config: NeighborhoodConfig | None = None):
        self.config = config or NeighborhoodConfig()

    def __call__(self, q, k, v, layout: TokenLayout, mask=None, info: CallInfo | None = None):
        if mask is not None:
            return None
        layout.check(q.shape[-2])
        res = self.config.resolve(layout, info)
        scale = info.scale if info is not None else None
        return _attend(q, k, v, layout, res, scale, self.config.backend, self.config.block_size)


class NeighborhoodProcessor(AttnplugProcessor):
    """Standalone processor: ``model.set_attn_processor(NeighborhoodProcessor(NeighborhoodConfig(...)))``.

    Without ``layout`` the grid is inferred as a square (single-frame) grid from each call's token count."""

    def __init__(self, config: NeighborhoodConfig | None = None, *, layout: TokenLayout | None = None, **kwargs):
        config = config if config is not None else NeighborhoodConfig()
        if not isinstance(config, NeighborhoodConfig):
            raise TypeError(f"NeighborhoodProcessor needs a NeighborhoodConfig, got {type(config).__name__}.")
        super().__init__(config, layout=layout, **kwargs)
