"""Backend choice for neighbourhood attention on ``(B, H, N, D)`` tensors with a :class:`TokenLayout`.

Backends (the same names in :class:`~attnplug.NeighborhoodConfig` and the functional ops):

- ``auto``: ``tiles`` off CUDA, the block-sparse Triton kernel on CUDA (its torch path when Triton does not import);
  ``flex`` and ``natten`` are chosen only by name until measurements say where they win;
- ``tiles``: gathered query tiles + batched SDPA (:mod:`.tiles`), any device;
- ``triton`` / ``torch``: the block-sparse kernel's backends with the neighbourhood as in-kernel element mask;
- ``flex``: FlexAttention with a ``BlockMask`` from the same exact LUT and the neighbourhood as its ``mask_mod``
  (:mod:`attnplug.kernels.block_sparse.flex`; compiled once per process, any device flex supports);
- ``natten``: NATTEN's fused kernels (:mod:`.natten`) when the ``natten`` package is installed (ValueError
  otherwise); text tokens are exact (NATTEN's additional keys for grid queries, SDPA for text queries);
- ``reference``: the plain fp32 reference (:mod:`.reference`, ``O(N^2)`` memory).

A window that covers the whole grid is plain SDPA (logged once at debug).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from ..._logging import log_once
from ...layout import TokenLayout
from .._cache import BoundedCache
from ..block_sparse import BlockLUT, block_sparse_attention
from ..block_sparse.flex import block_sparse_flex
from .natten import natten_attention
from .params import BACKENDS, ResolvedNeighborhood
from .reference import neighborhood_reference
from .tiles import CACHE_ENTRIES, tiles_attention

__all__ = ["BACKENDS", "neighborhood_dispatch", "neighborhood_lut"]

logger = logging.getLogger(__name__)

_LUT_CACHE = BoundedCache(CACHE_ENTRIES)


def neighborhood_lut(res: ResolvedNeighborhood, n_q: int, n_k: int, block_m: int, block_n: int,
                     device: torch.device | str) -> BlockLUT:
    """Exact block LUT of ``res`` for ``n_q`` queries and ``n_k`` keys (grid first, global tokens after), cached per
    device (bounded)."""
    key = (res, n_q, n_k, block_m, block_n, str(device))
    return _LUT_CACHE.get_or_build(key, lambda: res.mask().block_lut(n_q, block_m, block_n, n_k=n_k, device=device))


def check_backend(backend: str, owner: str = "neighborhood_attention") -> None:
    if backend not in BACKENDS:
        raise ValueError(f"{owner}: backend must be one of {BACKENDS}, got {backend!r}.")


def uses_block_sparse(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` on ``device`` runs the block-sparse kernel (which takes a key-padding ``kv_keep``)."""
    return backend in ("triton", "torch", "flex") or (backend == "auto" and device.type == "cuda")


def neighborhood_dispatch(q, k, v, layout: TokenLayout, res: ResolvedNeighborhood, *, scale: float | None = None,
                          backend: str = "auto", block_size: int = 64, kv_keep: torch.Tensor | None = None
                          ) -> torch.Tensor:
    """Neighbourhood attention of resolved parameters ``res`` over ``layout``.

    ``q``: ``(B, H, N_q, D)`` with ``N_q = layout.num_tokens`` or ``layout.image_tokens`` (grid queries only; the
    layout's text tokens are then extra global keys, text last); ``k, v``: ``(B, H, layout.num_tokens, D)``.
    ``kv_keep``: optional bool ``(B|1, layout.num_tokens)`` key padding in the layout's order, block-sparse backends
    only (:func:`uses_block_sparse`). Returns ``(B, H, N_q, D)``.
    """
    check_backend(backend)
    if kv_keep is not None and not uses_block_sparse(backend, q.device):
        raise ValueError(f"kv_keep needs a block-sparse backend (triton, torch, flex), got backend={backend!r} on "
                         f"{q.device.type}.")
    if res.is_dense:
        log_once(logger, logging.DEBUG, f"neighborhood: window covers the grid {layout.grid}; plain SDPA")
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if backend == "reference":
        return neighborhood_reference(q, k, v, layout, res.kernel_size, res.stride, res.dilation, res.is_causal,
                                      scale=scale)
    if backend == "tiles" or (backend == "auto" and q.device.type != "cuda"):
        return tiles_attention(q, k, v, layout, res, scale)
    if backend == "natten":
        return natten_attention(q, k, v, layout, res, scale)
    grid_only = q.shape[-2] != layout.num_tokens
    if not grid_only:
        q = layout.to_text_last(q)
    k, v = layout.to_text_last(k), layout.to_text_last(v)
    keep = {} if kv_keep is None else {"kv_keep": layout.to_text_last(kv_keep, dim=-1)}
    lut = neighborhood_lut(res, q.shape[-2], k.shape[-2], block_size, block_size, q.device)
    if backend == "flex":
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        out = block_sparse_flex(q, k, v, lut, neighborhood=res.mask(), scale=scale, **keep)
    else:
        out = block_sparse_attention(q, k, v, lut, neighborhood=res.mask(), scale=scale, backend=backend, **keep)
    return out if grid_only else layout.from_text_last(out)
