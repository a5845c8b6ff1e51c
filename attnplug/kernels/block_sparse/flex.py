"""FlexAttention backend of block-sparse attention: a ``BlockMask`` built from the same :class:`BlockLUT`.

The LUT becomes the ``BlockMask``'s partial blocks as it is (``kv_num_blocks = lut.counts``, ``kv_indices =
lut.indices``, ``BLOCK_SIZE = (block_m, block_n)``; size-1 batch/head dimensions broadcast inside flex) and one
``mask_mod`` carries the element masks: the neighbourhood (:class:`NeighborhoodMask`'s formulas, written with
elementwise torch ops), ``kv_keep`` (key padding) and keys ``>= N_k``. Flex's kernels skip the blocks not listed and
return zeros for query rows without any allowed key (its Triton, C++ and eager paths all set the row sum of such rows
to 1 and the output to 0), which is attnplug's rule.

Block sizes: flex's GPU kernel walks a sparse block in tiles that must divide it (``BLOCK_M | block_m``, ``BLOCK_N |
block_n``) and be at least 16, so a LUT whose blocks are multiples of 16 is used directly (the tiles are chosen to
divide them, :func:`kernel_tiles`); any other block size (e.g. an STA tile of 36 tokens) is re-blocked onto
``COARSE_BLOCK`` blocks that cover the listed ones, and the exact LUT membership becomes part of the element mask:
the semantics never depend on the kernel's tiles. The re-blocked mask is built once per LUT object and cached while
the LUT lives (static LUTs are reused every call; dynamic ones die after their call and leave the cache).

Head dims: flex's GPU kernel takes any head dim >= 16 (it rounds up to a power of two internally and masks the rest,
so 40, 72, 80 work); smaller head dims are zero-padded to 16 here (exact: zero channels add nothing to ``q . k``, and
the padded output channels are cut). Dtypes: float16, bfloat16, float32.

Compilation: eager flex materialises the whole score matrix, so the default is ``torch.compile(flex_attention,
dynamic=False)``, compiled once per process (one graph per shape, 20-30 s each on a CPU, seconds on a GPU); inside a
caller's ``torch.compile`` the plain op is used and traced. ``EAGER = True`` (or ``ATTNPLUG_FLEX_EAGER=1`` at import)
runs the uncompiled op, for tests on small shapes.

Damping (``damp``, one bool flag per LUT entry, UltraViCo): a ``score_mod`` multiplies the positive scaled scores of
the flagged entries' key blocks by ``damp_factor``, reading a ``(B, H, Mq, Mk)`` block table of the flags built on
the device per call (small: one value per block pair).

No host synchronisation: nothing here reads tensor values on the host; the only Python branches are on shapes,
dtypes, devices and ``None``. Inference only (inputs that require grad are refused).
"""

from __future__ import annotations

import os
import threading
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from .lut import BlockLUT
from .masks import NeighborhoodMask
from .reference import check_kv_keep, damp_block_mask

__all__ = ["COARSE_BLOCK", "EAGER", "MIN_HEAD_DIM", "block_sparse_flex", "clear_cache", "kernel_tiles"]

#: Run flex uncompiled (materialises the full score matrix: small shapes and tests only).
EAGER: bool = os.environ.get("ATTNPLUG_FLEX_EAGER", "0").lower() in ("1", "true", "yes", "on")
#: Smallest head dim flex's GPU kernel takes (``tl.dot`` needs K >= 16); smaller ones are zero-padded.
MIN_HEAD_DIM = 16
#: Sparse block ``(queries, keys)`` of the re-blocked mask for LUT blocks that are not multiples of 16.
COARSE_BLOCK = (128, 64)
_TILE = 16

_COMPILED: list = []
_COMPILE_LOCK = threading.Lock()


def _compiled_flex():
    """``torch.compile(flex_attention, dynamic=False)``, compiled once per process."""
    if not _COMPILED:
        with _COMPILE_LOCK:
            if not _COMPILED:
                _COMPILED.append(torch.compile(flex_attention, dynamic=False))
    return _COMPILED[0]


def kernel_tiles(block_m: int, block_n: int, dim: int, dtype: torch.dtype) -> tuple[int, int]:
    """Flex GPU kernel tiles ``(BLOCK_M, BLOCK_N)`` that divide the sparse block ``(block_m, block_n)`` (multiples of
    16): the largest power of two up to flex's own defaults (128 x 64 in half precision, 64 x 64 in float32, halved
    above head dim 128, where shared memory runs out first)."""
    cap_m = (128 if dtype != torch.float32 else 64) // (2 if dim > 128 else 1)
    cap_n = 64 // (2 if dim > 128 else 1)

    def largest(block: int, cap: int) -> int:
        tile = cap
        while block % tile:
            tile //= 2
        return tile

    return largest(block_m, cap_m), largest(block_n, cap_n)


# ---------------------------------------------------------------------------------------------------- element mask
def _neighborhood_allowed(nb: NeighborhoodMask, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
    """``nb.allowed`` with elementwise ops only (usable in a ``mask_mod``); dimensions the window covers whole are
    left out. Tokens ``>= prod(grid)`` are global."""
    n_grid = nb.num_grid_tokens
    ck = nb.coords(torch.clamp(kv_idx, max=n_grid - 1))
    inside = None
    for d, (r, start, end) in enumerate(nb.windows(torch.clamp(q_idx, max=n_grid - 1))):
        n, k, dil, causal = nb.grid[d], nb.kernel_size[d], nb.dilation[d], nb.is_causal[d]
        if n == 1 or (k == n and dil == 1 and not causal):
            continue
        jd = ck[d] // dil
        cond = (jd >= start) & (jd < end)
        if dil > 1:
            cond = cond & (ck[d] % dil == r)
        inside = cond if inside is None else inside & cond
    is_global = (q_idx >= n_grid) | (kv_idx >= n_grid)
    return is_global if inside is None else is_global | inside


def _mask_mod(neighborhood: NeighborhoodMask | None, keep: Tensor | None, fine: Tensor | None, block_m: int,
              block_n: int, n_k: int):
    """``mask_mod(b, h, q_idx, kv_idx)``: keys ``< n_k``, allowed by the neighbourhood, kept by ``keep`` ``(B,
    N_k)`` and, when re-blocked, listed in ``fine`` ``(B, H, Mq, Mk)`` (the LUT's own block mask)."""
    last_k = n_k - 1

    def mask_mod(b, h, q_idx, kv_idx):
        ok = kv_idx < n_k
        k_safe = torch.clamp(kv_idx, max=last_k)  # flex may evaluate padded key positions of the last block
        if neighborhood is not None:
            ok = ok & _neighborhood_allowed(neighborhood, q_idx, k_safe)
        if keep is not None:
            ok = ok & keep[b, k_safe]
        if fine is not None:
            qb = torch.clamp(q_idx // block_m, max=fine.shape[2] - 1)
            ok = ok & fine[b, h, qb, k_safe // block_n]
        return ok

    return mask_mod


def _damp_score_mod(far: Tensor, factor: float, block_m: int, block_n: int, n_k: int):
    """``score_mod(score, b, h, q_idx, kv_idx)``: positive scores of the key blocks flagged in ``far`` ``(B, H, Mq,
    Mk)`` multiplied by ``factor``."""
    last_k = n_k - 1

    def score_mod(score, b, h, q_idx, kv_idx):
        qb = torch.clamp(q_idx // block_m, max=far.shape[2] - 1)
        flagged = far[b, h, qb, torch.clamp(kv_idx, max=last_k) // block_n]
        return torch.where(flagged & (score > 0), score * factor, score)

    return score_mod


# ---------------------------------------------------------------------------------------------------- block masks
def _lut_block_mask(lut: BlockLUT, n_k: int) -> Tensor:
    """Boolean block mask ``(B|1, H|1, Mq, Mk)`` of ``lut`` without a host sync (padding entries dropped)."""
    mk = -(-n_k // lut.block_n)
    valid = torch.arange(lut.max_k_blocks, device=lut.counts.device) < lut.counts[..., None]
    idx = torch.where(valid, lut.indices.long(), mk)  # padding entries land in an extra column, cut below
    mask = torch.zeros(*lut.counts.shape, mk + 1, dtype=torch.bool, device=lut.counts.device)
    return mask.scatter_(-1, idx, True)[..., :mk]


def _pool_any(mask: Tensor, dim: int, block: int, coarse: int, n: int) -> Tensor:
    """OR, along ``dim`` of ``mask``, of the ``block``-token blocks overlapping each ``coarse``-token block of ``n``
    tokens: ``(..., M, ...) -> (..., ceil(n / coarse), ...)``."""
    starts = torch.arange(0, n, coarse, device=mask.device)
    lo = starts // block
    hi = (torch.clamp(starts + coarse, max=n) - 1) // block
    span = -(-coarse // block) + 1  # most fine blocks one coarse block can touch
    idx = torch.minimum(lo[:, None] + torch.arange(span, device=mask.device), hi[:, None])
    return mask.index_select(dim, idx.flatten()).unflatten(dim, idx.shape).any(dim + 1)


def _coarse_structure(lut: BlockLUT, n_q: int, n_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(counts, indices, fine)`` of a ``COARSE_BLOCK`` mask covering every block ``lut`` lists; ``fine`` is the
    LUT's own block mask ``(B|1, H|1, Mq, Mk)``, applied per element."""
    fine = _lut_block_mask(lut, n_k)
    cm, cn = COARSE_BLOCK
    coarse = _pool_any(_pool_any(fine, 2, lut.block_m, cm, n_q), 3, lut.block_n, cn, n_k)
    counts = coarse.sum(-1, dtype=torch.int32)
    indices = torch.sort((~coarse).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
    return counts.contiguous(), indices.contiguous(), fine


class _PerLutCache:
    """Values built from a LUT, kept while that LUT object lives (weakly referenced) and at most ``max_entries``."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._data: dict = {}
        self._lock = threading.Lock()

    def get(self, lut: BlockLUT, key: tuple, build):
        full_key = (id(lut), *key)
        entry = self._data.get(full_key)
        if entry is not None and entry[0]() is lut:
            return entry[1]
        value = build()
        with self._lock:
            self._data[full_key] = (weakref.ref(lut), value)
            while len(self._data) > self.max_entries:
                self._data.pop(next(iter(self._data)))
        weakref.finalize(lut, self._forget, id(lut))
        return value

    def _forget(self, lut_id: int) -> None:
        with self._lock:
            for key in [key for key in self._data if key[0] == lut_id]:
                del self._data[key]

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_CACHE = _PerLutCache(32)


def _cached(lut: BlockLUT, key: tuple, build):
    """``build()`` once per live LUT object and key; built inline (not cached) while ``torch.compile`` traces."""
    return build() if torch.compiler.is_compiling() else _CACHE.get(lut, key, build)


def clear_cache() -> None:
    """Drops every cached re-blocked mask."""
    _CACHE.clear()


# ---------------------------------------------------------------------------------------------------- entry point
def block_sparse_flex(q: Tensor, k: Tensor, v: Tensor, lut: BlockLUT, *, neighborhood: NeighborhoodMask | None,
                      scale: float, kv_keep: Tensor | None = None, damp: Tensor | None = None,
                      damp_factor: float = 1.0) -> Tensor:
    """Block-sparse attention with FlexAttention (inputs otherwise validated by the dispatcher; no threshold).

    Args:
        q: ``(B, H, N_q, D)``; k, v: ``(B, H, N_k, D)``; one dtype (float16, bfloat16, float32) and device.
        lut: key blocks per query block, ``(B|1, H|1, ceil(N_q / block_m), *)``, on ``q``'s device (a LUT on another
            device is copied every call, which also defeats the per-LUT cache).
        neighborhood: optional element mask from token coordinates (tokens ``>= prod(grid)`` are global).
        scale: softmax scale.
        kv_keep: optional bool ``(B|1, N_k)``; keys where it is False are excluded for every query.
        damp: optional bool flags shaped like ``lut.indices``: the positive scores of a flagged entry's key block are
            multiplied by ``damp_factor``.

    Returns:
        ``(B, H, N_q, D)`` in ``q.dtype``; query rows with no allowed key are zero.
    """
    batch, heads, n_q, dim = q.shape
    n_k = k.shape[2]
    check_kv_keep(kv_keep, batch, n_k, k.device)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise ValueError("block_sparse_flex is inference-only: q, k and v must not require grad (wrap the call in "
                         "torch.no_grad() or detach them).")
    if lut.counts.device != q.device:
        lut = lut.to(q.device)
    score_mod = None
    if damp is not None:
        far = damp_block_mask(lut, damp.to(q.device), -(-n_k // lut.block_n)).expand(batch, heads, -1, -1)
        score_mod = _damp_score_mod(far, float(damp_factor), lut.block_m, lut.block_n, n_k)
    eager = EAGER and not torch.compiler.is_compiling()
    if lut.block_m % _TILE == 0 and lut.block_n % _TILE == 0:
        counts, indices, block = lut.counts, lut.indices, (lut.block_m, lut.block_n)
        # Eager flex applies only the mask_mod (the block lists are a hint to the kernels): add the LUT to it.
        fine = _cached(lut, ("fine", n_k), lambda: _lut_block_mask(lut, n_k)) if eager else None
    else:
        counts, indices, fine = _cached(lut, ("coarse", n_q, n_k), lambda: _coarse_structure(lut, n_q, n_k))
        block = COARSE_BLOCK
    mk = -(-n_k // block[1])
    if indices.shape[-1] < mk:  # BlockMask reads the key length it covers from the width of its block lists
        indices = F.pad(indices, (0, mk - indices.shape[-1]))
    if fine is not None:
        fine = fine.expand(batch, heads, -1, -1)
    keep = None if kv_keep is None else kv_keep.expand(batch, n_k)
    mask_mod = None
    if neighborhood is not None or keep is not None or fine is not None:
        mask_mod = _mask_mod(neighborhood, keep, fine, lut.block_m, lut.block_n, n_k)
    block_mask = BlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=block, mask_mod=mask_mod,
                                          seq_lengths=(n_q, n_k), compute_q_blocks=False)
    pad = max(0, MIN_HEAD_DIM - dim)
    if pad:
        q, k, v = (F.pad(x, (0, pad)) for x in (q, k, v))
    kernel_options = None
    if q.device.type == "cuda":
        tile_m, tile_n = kernel_tiles(block[0], block[1], dim + pad, q.dtype)
        kernel_options = {"BLOCK_M": tile_m, "BLOCK_N": tile_n}
    flex = flex_attention if eager or torch.compiler.is_compiling() else _compiled_flex()
    if score_mod is None:
        out = flex(q, k, v, block_mask=block_mask, scale=scale, kernel_options=kernel_options)
    else:
        out = flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, kernel_options=kernel_options)
    return out[..., :dim] if pad else out
