"""Functional neighbourhood attention with NATTEN's argument order.

- :func:`na1d`, :func:`na2d`, :func:`na3d` and the generic :func:`neighborhood_attention_generic` take NATTEN-shaped
  tensors ``(B, *spatial, H, D)`` (heads last, as ``natten.na2d``) and the arguments in NATTEN's order
  ``(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None, additional_keys=None,
  additional_values=None)``. As in NATTEN an int means that value for every dimension of the op, and validation is
  strict (a kernel larger than its dimension raises).
- :func:`neighborhood_attention` is the same op on attnplug's ``(B, H, N, D)`` tensors with a :class:`TokenLayout`
  (text tokens, first or last, are global: they attend to every token and every token attends to them). Its ``int``
  follows the package rule (:mod:`attnplug._args`): an int or a 2-tuple is (height, width) and frames stay
  unrestricted unless a 3-tuple is given.

Semantics per dimension (NATTEN / GNA): ``kernel_size`` neighbours in an inward (clamped) window; ``stride`` ``s``:
``s`` consecutive queries share the window of their group's centre (1 = sliding, ``kernel_size`` = blocked windows);
``dilation`` ``d``: a query sees only keys of its residue class ``i % d``; ``is_causal``: the window ends at the query.
A window covering every dimension is plain SDPA.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..._args import DIM_NAMES
from ...layout import TokenLayout
from .dispatch import check_backend, neighborhood_dispatch
from .params import normalize_params, resolve_neighborhood

__all__ = ["na1d", "na2d", "na3d", "neighborhood_attention", "neighborhood_attention_generic"]


def neighborhood_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size,
    stride=1,
    dilation=1,
    is_causal=False,
    scale: float | None = None,
    *,
    layout: TokenLayout | None = None,
    backend: str = "auto",
    block_size: int = 64,
) -> Tensor:
    """Neighbourhood attention over ``layout``'s ``(frames, height, width)`` grid (strict NATTEN-style validation).

    Args:
        query, key, value: ``(B, H, N, D)`` with ``N = layout.num_tokens`` (text tokens, if any, are global).
        kernel_size, stride, dilation, is_causal: int/bool (height and width; frames unrestricted) or tuples of 2
            ``(height, width)`` or 3 ``(frames, height, width)``; a kernel entry ``None`` leaves that dimension
            unrestricted.
        scale: softmax scale (default ``1 / sqrt(D)``).
        layout: the token layout (keyword-only, required).
        backend: ``auto``, ``tiles``, ``triton``, ``torch`` or ``reference`` (see :mod:`.dispatch`).
        block_size: block-sparse kernel block size in tokens (queries and keys).

    Returns:
        ``(B, H, N, D)``.

    Raises:
        ValueError: kernel larger than a dimension, ``kernel * dilation`` larger than a dimension, even non-causal
            kernels, non-positive values; the message names the dimension and the limit.
        TypeError: ``layout`` passed positionally (the fourth argument is ``kernel_size``).
    """
    owner = "neighborhood_attention"
    if isinstance(kernel_size, TokenLayout):
        raise TypeError(
            f"{owner}: the fourth argument is kernel_size (NATTEN's order: kernel_size, stride, dilation, is_causal, "
            "scale); pass the layout as layout=..., e.g. neighborhood_attention(q, k, v, 7, layout=layout)."
        )
    if not isinstance(layout, TokenLayout):
        raise TypeError(f"{owner}: layout must be a TokenLayout, got {type(layout).__name__}.")
    check_backend(backend, owner)
    layout.check(query.shape[-2])
    params = normalize_params(kernel_size, stride, dilation, is_causal, owner=owner)
    res = resolve_neighborhood(layout.grid, *params, clamp=False, owner=owner)
    return neighborhood_dispatch(query, key, value, layout, res, scale=scale, backend=backend, block_size=block_size)


def _check_natten_shapes(query: Tensor, key: Tensor, value: Tensor, additional_keys, additional_values,
                         owner: str) -> None:
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(x).__name__}.")
    if not 4 <= query.dim() <= 6:
        raise ValueError(
            f"{owner}: query must be (B, *spatial, H, D) with 1-3 spatial dims, got {tuple(query.shape)}."
        )
    if key.shape != query.shape or value.shape != query.shape:
        raise ValueError(
            f"{owner}: query, key and value must have one shape (B, *spatial, H, D), got {tuple(query.shape)}, "
            f"{tuple(key.shape)} and {tuple(value.shape)}."
        )
    if (additional_keys is None) != (additional_values is None):
        raise ValueError(f"{owner}: additional_keys and additional_values go together (both or neither).")
    if additional_keys is not None:
        b, h, d = query.shape[0], query.shape[-2], query.shape[-1]
        for name, x in (("additional_keys", additional_keys), ("additional_values", additional_values)):
            if not isinstance(x, Tensor) or x.dim() != 4 or (x.shape[0], x.shape[2], x.shape[3]) != (b, h, d):
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"{owner}: {name} must be (B, N_extra, H, D) = ({b}, *, {h}, {d}), got {shape}.")


def neighborhood_attention_generic(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    kernel_size,
    stride=1,
    dilation=1,
    is_causal=False,
    scale: float | None = None,
    additional_keys: Tensor | None = None,
    additional_values: Tensor | None = None,
    *,
    backend: str = "auto",
    block_size: int = 64,
    _owner: str = "neighborhood_attention_generic",
) -> Tensor:
    """Neighbourhood attention on NATTEN-shaped tensors, 1-3 spatial dimensions.

    Args:
        query, key, value: ``(B, *spatial, H, D)`` (heads last, as NATTEN), ``spatial`` of 1, 2 or 3 dims.
        kernel_size, stride, dilation, is_causal: an int/bool (every spatial dimension, as NATTEN) or a tuple with one
            entry per spatial dimension.
        scale: softmax scale (default ``1 / sqrt(D)``).
        additional_keys, additional_values: ``(B, N_extra, H, D)`` keys/values every query also attends to (e.g. the
            text tokens of joint attention).
        backend: ``auto``, ``tiles``, ``triton``, ``torch`` or ``reference``.
        block_size: block-sparse kernel block size in tokens.

    Returns:
        ``(B, *spatial, H, D)``.
    """
    _check_natten_shapes(query, key, value, additional_keys, additional_values, _owner)
    check_backend(backend, _owner)
    spatial = tuple(query.shape[1:-2])
    ndim = len(spatial)
    b, h, d = query.shape[0], query.shape[-2], query.shape[-1]
    params = normalize_params(kernel_size, stride, dilation, is_causal, owner=_owner, ndim=ndim, spatial=None)
    grid = (1,) * (3 - ndim) + spatial
    res = resolve_neighborhood(grid, *params, clamp=False, owner=_owner, names=DIM_NAMES)
    n = query[0, ..., 0, 0].numel()
    extra = 0 if additional_keys is None else additional_keys.shape[1]
    q = query.reshape(b, n, h, d)
    k, v = key.reshape(b, n, h, d), value.reshape(b, n, h, d)
    if extra:
        k = torch.cat([k, additional_keys.to(k.dtype)], dim=1)
        v = torch.cat([v, additional_values.to(v.dtype)], dim=1)
    layout = TokenLayout(*grid, text_tokens=extra, text_first=False)
    out = neighborhood_dispatch(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), layout, res, scale=scale,
                                backend=backend, block_size=block_size)
    return out.transpose(1, 2).reshape(query.shape)


def _na(ndim: int, name: str, query: Tensor, *args, **kwargs) -> Tensor:
    if isinstance(query, Tensor) and query.dim() != ndim + 3:
        raise ValueError(
            f"{name}: query must be {ndim + 3}-D (B, {', '.join(('X', 'Y', 'Z')[:ndim])}, H, D), got shape "
            f"{tuple(query.shape)}."
        )
    return neighborhood_attention_generic(query, *args, _owner=name, **kwargs)


def na1d(query: Tensor, key: Tensor, value: Tensor, kernel_size, stride=1, dilation=1, is_causal=False,
         scale: float | None = None, additional_keys: Tensor | None = None, additional_values: Tensor | None = None,
         *, backend: str = "auto", block_size: int = 64) -> Tensor:
    """1-D neighbourhood attention, ``(B, X, H, D)`` -> same; see :func:`neighborhood_attention_generic`."""
    return _na(1, "na1d", query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
               additional_values, backend=backend, block_size=block_size)


def na2d(query: Tensor, key: Tensor, value: Tensor, kernel_size, stride=1, dilation=1, is_causal=False,
         scale: float | None = None, additional_keys: Tensor | None = None, additional_values: Tensor | None = None,
         *, backend: str = "auto", block_size: int = 64) -> Tensor:
    """2-D neighbourhood attention, ``(B, X, Y, H, D)`` -> same; see :func:`neighborhood_attention_generic`."""
    return _na(2, "na2d", query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
               additional_values, backend=backend, block_size=block_size)


def na3d(query: Tensor, key: Tensor, value: Tensor, kernel_size, stride=1, dilation=1, is_causal=False,
         scale: float | None = None, additional_keys: Tensor | None = None, additional_values: Tensor | None = None,
         *, backend: str = "auto", block_size: int = 64) -> Tensor:
    """3-D neighbourhood attention, ``(B, X, Y, Z, H, D)`` -> same; see :func:`neighborhood_attention_generic`."""
    return _na(3, "na3d", query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
               additional_values, backend=backend, block_size=block_size)
