"""Public entry point: validation, backend choice (logged once at debug) and statistics.

Nothing here reads a tensor value on the host for a table built by :class:`BlockLUT`'s constructors: shapes are
compared as Python ints, and the statistics stay device tensors until the caller reads them.
"""

from __future__ import annotations

import logging
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._logging import log_once
from ..._optional import optional_import
from .._cache import BoundedCache
from .lut import DEFAULT_BLOCK_M, DEFAULT_BLOCK_N, BlockLUT
from .masks import NeighborhoodMask
from .reference import block_sparse_reference, check_damp, check_kv_keep
from .torch import block_sparse_torch

__all__ = ["BACKENDS", "block_sparse_attention", "choose_backend", "needs_backward"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "flex", "torch", "reference")
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_LUT_CACHE = BoundedCache(32)


def _log_once(backend: str, reason: str) -> None:
    log_once(logger, logging.DEBUG, f"block_sparse_attention: backend {backend!r} ({reason})")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _triton_import_error() -> str | None:
    """Why triton does not import (None if it does); tried once per process."""
    found = optional_import("triton")
    return found if isinstance(found, str) else None


def _validate_inputs(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, N, D), got shape {tuple(x.shape)}.")
        if x.dtype not in _SUPPORTED_DTYPES:
            raise ValueError(f"{name} has dtype {x.dtype}; accepted: float16, bfloat16, float32.")
    if k.shape != v.shape:
        raise ValueError(
            f"k and v must have the same shape (B, H, N_k, D), got {tuple(k.shape)} and {tuple(v.shape)}."
        )
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch, heads and head dim (B, H, *, D)."
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}.")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}.")
    if q.shape[2] == 0 or k.shape[2] == 0 or q.shape[3] == 0:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must have at least one token and one channel.")


def choose_backend(backend: str, q: Tensor) -> tuple[str, str]:
    """Resolves ``backend`` for inputs on ``q.device``; returns ``(name, reason)``.

    ``auto``: ``triton`` on CUDA when Triton imports (its per-block torch path otherwise, with one warning), ``torch``
    on every other device. ``flex`` (FlexAttention) runs anywhere torch has it. Forcing ``triton`` needs a CUDA device
    or ``TRITON_INTERPRET=1`` (the interpreter runs on CPU tensors); otherwise ValueError.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if backend == "auto":
        if q.device.type == "cuda":
            err = _triton_import_error()
            if err is None:
                return "triton", "auto: CUDA tensors and Triton available"
            log_once(logger, logging.WARNING, f"block_sparse_attention: Triton does not import ({err}); CUDA "
                     "calls run the per-block torch path, which is much slower. Install triton.")
            return "torch", f"auto: CUDA tensors but Triton unavailable ({err})"
        return "torch", f"auto: {q.device.type} tensors"
    if backend == "triton":
        err = _triton_import_error()
        if err is not None:
            raise ValueError(f"backend='triton' needs the triton package, which failed to import ({err}).")
        if q.device.type != "cuda" and not _interpreting():
            raise ValueError(
                f"backend='triton' needs CUDA tensors, got tensors on {q.device}; set TRITON_INTERPRET=1 before "
                "importing triton to run the kernel in the (slow) interpreter, or use backend='torch'."
            )
        return "triton", "forced" + (" (interpreter)" if q.device.type != "cuda" else "")
    return backend, "forced"


def needs_backward(*tensors: Tensor) -> bool:
    """Whether autograd would record a call on these tensors (grad mode on and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _neighborhood_lut(neighborhood: NeighborhoodMask, n_q: int, n_k: int, block_m: int, block_n: int,
                      device: str) -> BlockLUT:
    """The exact LUT of ``neighborhood``, cached per shape and device (bounded)."""
    return _LUT_CACHE.get_or_build((neighborhood, n_q, n_k, block_m, block_n, device),
                                   lambda: neighborhood.block_lut(n_q, block_m, block_n, n_k=n_k, device=device))


def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, lut: BlockLUT | None = None, *,
                           neighborhood: NeighborhoodMask | None = None, scale: float | None = None,
                           threshold: float | None = None, kv_keep: Tensor | None = None, backend: str = "auto",
                           return_stats: bool = False, damp: Tensor | None = None, damp_factor: float = 1.0):
    """Attention restricted to the key blocks of ``lut`` and, if given, to the element mask ``neighborhood``.

    Args:
        q: ``(B, H, N_q, D)``; k, v: ``(B, H, N_k, D)``; float16, bfloat16 or float32, one device.
        lut: key blocks per query block, ``(B|1, H|1, ceil(N_q / block_m), *)``. None = all key blocks (with a
            ``neighborhood``, its exact LUT with 128 x 64 blocks is used instead: same result, less work). A table
            built with :class:`BlockLUT`'s constructors is trusted; one made directly from tensors is checked by value
            once, at its first call (that check reads it on the host).
        neighborhood: element mask from token coordinates; tokens ``>= prod(grid)`` are global.
        scale: softmax scale, default ``1 / sqrt(D)``.
        threshold: if set (> 0, natural-log units), a listed key block is skipped when every query row of the block
            has ``s_blk - m < -threshold`` (``s_blk``: the row max of the block's scaled scores, ``m``: the running
            row max over the blocks before it in LUT order). Each skipped block adds less than
            ``block_n * exp(-threshold)`` to a row's softmax mass (relative to its max weight 1), so the output of a
            row with ``S`` skipped blocks moves by at most ``2 * max|v| * S * block_n * exp(-threshold)``.
            Not available with ``backend="flex"``.
        kv_keep: optional bool ``(B|1, N_k)``: keys where it is False are left out for every query (key padding).
        backend: ``auto`` (Triton on CUDA, torch elsewhere), ``triton``, ``flex`` (FlexAttention), ``torch`` or
            ``reference``. ``triton`` has no backward: inputs that require grad under grad mode are refused.
        damp: optional bool flags shaped like ``lut.indices`` (one per LUT entry, on the LUT's device; needs a
            ``lut``): the positive scaled scores ``s`` of a flagged entry's key block become ``damp_factor * s``
            before masking, the softmax and threshold skipping (UltraViCo's damping of far frames; the long-video
            pattern flags the key frames more than half the training length from the query frame). Every backend
            applies it; None (default) runs exactly the undamped call.
        damp_factor: the factor of the flagged entries (finite, > 0; UltraViCo's ``alpha`` in ``(0, 1]``).
        return_stats: also return a dict with ``visited_blocks`` (LUT entries walked over all batches/heads/query
            blocks), ``skipped_blocks`` (of those, skipped by ``threshold``), ``density`` (fraction of token pairs
            in the LUT's blocks), ``backend``. The counts and the density are 0-d tensors on ``q.device`` (reading
            them is the caller's host synchronisation, not the call's).

    Returns:
        ``out`` ``(B, H, N_q, D)`` in ``q.dtype`` (query rows with no allowed key are zero) [, stats].
    """
    _validate_inputs(q, k, v)
    batch, heads, n_q, dim = q.shape
    n_k = k.shape[2]
    if lut is not None and not isinstance(lut, BlockLUT):
        raise TypeError(f"lut must be a BlockLUT or None, got {type(lut).__name__}.")
    if neighborhood is not None:
        if not isinstance(neighborhood, NeighborhoodMask):
            raise TypeError(f"neighborhood must be a NeighborhoodMask or None, got {type(neighborhood).__name__}.")
        neighborhood.check_tokens(n_q, "N_q")
        neighborhood.check_tokens(n_k, "N_k")
    if threshold is not None and not (isinstance(threshold, (int, float)) and math.isfinite(threshold)
                                      and threshold > 0):
        raise ValueError(f"threshold must be a finite number > 0 (natural-log units) or None, got {threshold!r}.")
    if scale is None:
        scale = 1.0 / math.sqrt(dim)
    elif not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite float or None, got {scale!r}.")
    check_kv_keep(kv_keep, q.shape[0], n_k, q.device)
    check_damp(damp, damp_factor, lut)
    name, reason = choose_backend(backend, q)
    _log_once(name, reason)
    if name == "flex" and threshold is not None:
        raise ValueError(f"backend='flex' cannot skip blocks by threshold (threshold={threshold!r}); use "
                         "backend='triton' (CUDA) or 'torch', or threshold=None.")
    if name == "triton" and needs_backward(q, k, v):
        raise ValueError("backend='triton' has no backward pass, and q, k or v requires grad under grad mode; run "
                         "under torch.no_grad(), or use backend='flex' or 'torch' to train through the call.")
    if lut is not None:
        lut.check_shape(batch, heads, n_q, n_k)
        if not lut.trusted:
            lut.validate(batch, heads, n_q, n_k)  # once per table: it is marked checked
    keep = {} if kv_keep is None else {"kv_keep": kv_keep}
    if damp is not None:  # passed only when given: the undamped call is the same call as before damping existed
        dev = "cpu" if name == "torch" else q.device
        keep.update(damp=damp.to(dev), damp_factor=float(damp_factor))
    skipped: Tensor | int = 0
    if name == "reference":
        out, st = block_sparse_reference(q, k, v, lut, neighborhood=neighborhood, scale=scale, threshold=threshold,
                                         return_stats=True, **keep)
        out = out.to(q.dtype)
        skipped = st["skipped_blocks"]
        if lut is None:
            lut = BlockLUT.full(n_q, n_k, DEFAULT_BLOCK_M, DEFAULT_BLOCK_N, device=q.device)
    else:
        if lut is None and neighborhood is not None:
            lut = _neighborhood_lut(neighborhood, n_q, n_k, DEFAULT_BLOCK_M, DEFAULT_BLOCK_N, str(q.device))
        if lut is None and threshold is None and kv_keep is None and name == "torch":  # (damp needs a lut)
            _log_once("torch", "no LUT, no neighbourhood: dense SDPA fast path")
            out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        else:
            if lut is None:
                lut = BlockLUT.full(n_q, n_k, DEFAULT_BLOCK_M, DEFAULT_BLOCK_N, device=q.device)
            if name == "triton":
                from .triton import block_sparse_triton

                out, skipped = block_sparse_triton(q, k, v, lut.to(q.device), neighborhood=neighborhood, scale=scale,
                                                   threshold=threshold, **keep)
            elif name == "flex":
                from .flex import block_sparse_flex

                out = block_sparse_flex(q, k, v, lut.to(q.device), neighborhood=neighborhood, scale=scale, **keep)
            else:
                out, skipped = block_sparse_torch(q, k, v, lut.to("cpu"), neighborhood=neighborhood, scale=scale,
                                                  threshold=threshold, **keep)
    if not return_stats:
        return out
    return out, _call_stats(lut, skipped, batch, heads, n_q, n_k, q.device, name)


def _call_stats(lut: BlockLUT | None, skipped: Tensor | int, batch: int, heads: int, n_q: int, n_k: int, device,
                backend: str) -> dict:
    """The call's statistics as 0-d tensors on ``device`` (no host synchronisation)."""
    if lut is None:
        visited = torch.tensor(batch * heads * math.ceil(n_q / DEFAULT_BLOCK_M) * math.ceil(n_k / DEFAULT_BLOCK_N),
                               device=device)
        density = torch.ones((), device=device)
    else:
        counts = lut.counts.to(device)
        visited = counts.expand(batch, heads, -1).sum(dtype=torch.int64)
        density = lut.to(device).pair_count(n_q, n_k).mean() / (n_q * n_k)
    skipped = skipped.sum(dtype=torch.int64) if isinstance(skipped, Tensor) else torch.tensor(int(skipped),
                                                                                              device=device)
    return {"visited_blocks": visited, "skipped_blocks": skipped.to(device), "density": density, "backend": backend}
