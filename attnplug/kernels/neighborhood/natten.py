"""NATTEN backend of neighbourhood attention: NATTEN's fused ``na1d`` / ``na2d`` / ``na3d`` on attnplug's tensors.

NATTEN (``pip install natten``; its CUDA kernels need the wheels from natten.org or a CUDA build) takes
``(B, *spatial, H, D)`` tensors and ``kernel_size, stride, dilation, is_causal`` per spatial dimension, with the same
(GNA) semantics as :class:`~attnplug.kernels.block_sparse.NeighborhoodMask`. The adapter:

- keeps the grid dimensions with a kernel of at least 2 as NATTEN's spatial dimensions and folds the others (length 1,
  or kernel 1: a query sees only its own coordinate there) into the batch;
- handles text (global) tokens exactly: grid queries attend to the grid with NATTEN's neighbourhood op and to the text
  keys with NATTEN's ``attention`` (both return their log-sum-exp), merged by :func:`~attnplug.kernels.merge.
  merge_attentions` (the merge inside NATTEN's ``additional_keys`` path refuses the non-contiguous outputs of its 1-D
  Flex backend); text queries attend to every key with plain SDPA;
- off CUDA, where NATTEN runs only its Flex backend (power-of-two head dims from 8 to 512), zero-pads other head dims
  to the next power of two with the scale of the real one (exact: zero channels add nothing to ``q . k`` and the
  padded output channels are cut). On CUDA the head dim goes to NATTEN as is and NATTEN picks its kernel.

Everything here is shape arithmetic and views: no host synchronisation.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..._logging import log_once
from ..._optional import optional_import
from ...layout import TokenLayout
from ..merge import merge_attentions
from .params import ResolvedNeighborhood

__all__ = ["natten_attention", "natten_unavailable_reason"]

logger = logging.getLogger(__name__)


def _natten():
    """The ``natten`` module or the import error message (tried once per process)."""
    return optional_import("natten")


def natten_unavailable_reason() -> str | None:
    """Why the ``natten`` backend cannot run here (None when NATTEN imports)."""
    mod = _natten()
    return mod if isinstance(mod, str) else None


def _head_dim_for(dim: int, device: torch.device) -> int:
    """Head dim to hand NATTEN: unchanged on CUDA; off CUDA the next power of two >= 8 (its Flex backend's rule)."""
    if device.type == "cuda":
        return dim
    return max(8, 1 << (dim - 1).bit_length())


def natten_attention(q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout, res: ResolvedNeighborhood,
                     scale: float | None = None) -> Tensor:
    """Neighbourhood attention of ``res`` over ``layout`` with NATTEN's kernels.

    Args:
        q: ``(B, H, N_q, D)`` with ``N_q = layout.num_tokens`` or ``layout.image_tokens`` (grid queries only);
            k, v: ``(B, H, layout.num_tokens, D)``. Text tokens (first or last) are global.
        layout: the token layout; res: resolved parameters for ``layout.grid``.
        scale: softmax scale (default ``1 / sqrt(D)``).

    Returns:
        ``(B, H, N_q, D)`` in ``q.dtype``.
    """
    natten = _natten()
    if isinstance(natten, str):
        raise ValueError(
            f"backend='natten' needs the natten package, which failed to import ({natten}); install it "
            "(pip install natten, CUDA wheels from natten.org) or use backend='flex', 'triton', 'tiles' or 'torch'."
        )
    if q.device.type == "cuda" and not getattr(natten, "HAS_LIBNATTEN", True):
        log_once(logger, logging.WARNING, "natten: installed without its CUDA kernels (libnatten); NATTEN falls back "
                 "to its Flex backend")
    dim = q.shape[-1]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    grid_only = q.shape[-2] != layout.num_tokens
    if not grid_only:
        q = layout.to_text_last(q)
    k, v = layout.to_text_last(k), layout.to_text_last(v)
    n_grid = layout.image_tokens
    padded = _head_dim_for(dim, q.device)
    if padded != dim:
        q, k, v = (F.pad(x, (0, padded - dim)) for x in (q, k, v))
    out = _grid_queries(natten, q[:, :, :n_grid], k, v, res, n_grid, scale)
    if not grid_only and q.shape[-2] > n_grid:
        text_out = F.scaled_dot_product_attention(q[:, :, n_grid:], k, v, scale=scale)
        out = layout.from_text_last(torch.cat([out, text_out], dim=-2))
    return out[..., :dim] if padded != dim else out


def _grid_queries(natten, q: Tensor, k: Tensor, v: Tensor, res: ResolvedNeighborhood, n_grid: int,
                  scale: float) -> Tensor:
    """NATTEN over the grid queries ``q`` ``(B, H, n_grid, D)``; keys after ``n_grid`` are NATTEN's additional keys."""
    batch, heads, _, dim = q.shape
    grid = res.grid
    kept = [d for d in range(3) if grid[d] > 1 and res.kernel_size[d] > 1]
    folded = [d for d in range(3) if d not in kept]
    if not kept:
        raise ValueError(
            f"backend='natten' needs a kernel of at least 2 in some dimension of the grid {grid}, got kernel_size "
            f"{res.kernel_size}; use backend='tiles' or 'torch' for per-token windows."
        )
    order = [0, *(1 + d for d in folded), *(1 + d for d in kept), 4, 5]
    fold = math.prod(grid[d] for d in folded)
    spatial = tuple(grid[d] for d in kept)

    def to_natten(x: Tensor) -> Tensor:  # (B, H, n_grid, D) -> (B * fold, *spatial, H, D)
        x = x.transpose(1, 2).reshape(batch, *grid, heads, dim).permute(order)
        return x.reshape(batch * fold, *spatial, heads, dim)

    op = (natten.na1d, natten.na2d, natten.na3d)[len(kept) - 1]
    q_n = to_natten(q)
    out = op(q_n, to_natten(k[:, :, :n_grid]), to_natten(v[:, :, :n_grid]),
             kernel_size=tuple(res.kernel_size[d] for d in kept), stride=tuple(res.stride[d] for d in kept),
             dilation=tuple(res.dilation[d] for d in kept), is_causal=tuple(res.is_causal[d] for d in kept),
             scale=scale, return_lse=k.shape[-2] > n_grid)
    if k.shape[-2] > n_grid:  # text keys: (B * fold, T, H, D), merged by log-sum-exp
        out, lse = out
        text_k, text_v = (x[:, :, n_grid:].transpose(1, 2).repeat_interleave(fold, dim=0) for x in (k, v))
        text_out, text_lse = natten.attention(q_n.flatten(1, -3), text_k, text_v, scale=scale, return_lse=True)
        out, _ = merge_attentions([out.flatten(1, -3), text_out], [lse.flatten(1, -2), text_lse])
        out = out.to(q.dtype)
    inverse = [order.index(i) for i in range(6)]
    out = out.reshape(batch, *(grid[d] for d in folded), *spatial, heads, dim).permute(inverse)
    return out.reshape(batch, n_grid, heads, dim).transpose(1, 2)
