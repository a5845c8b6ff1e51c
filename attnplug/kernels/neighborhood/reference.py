"""Plain fp32 reference of neighbourhood attention, written from the NATTEN/GNA definition with loops over each
query coordinate (not from the fast paths' mask code). Ground truth for tests; ``O(N^2)`` memory.

Per dimension of length ``n`` with kernel ``k``, dilation ``d``, stride ``s``: a query at coordinate ``i`` sees only
keys of its own residue class ``i % d`` (its *group*, positions ``a = 0, 1, ...`` within it); ``s`` consecutive group
positions share the window of their *leader* (the centre of the stride group, the right-hand one for even strides;
for causal windows its last position). A non-causal window is the ``k`` group positions centred on the leader, shifted
inside the group at the borders; a causal one ends at the query itself and starts ``k - 1`` before the leader.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...layout import TokenLayout

__all__ = ["neighborhood_mask", "neighborhood_reference", "window_1d"]


def window_1d(i: int, length: int, kernel: int, dilation: int, stride: int, causal: bool) -> set[int]:
    """Key coordinates that query coordinate ``i`` sees along one dimension."""
    group = list(range(i % dilation, length, dilation))  # positions sharing i's dilation residue
    a = group.index(i)
    if causal:  # the stride group's last position leads; the window still ends at the query
        leader = min((a // stride) * stride + stride - 1, len(group) - 1)
        lo, hi = max(0, leader - kernel + 1), a
    else:
        leader = min((a // stride) * stride + stride // 2, len(group) - 1)
        lo = max(leader - kernel // 2, 0)
        if lo + kernel > len(group):
            lo = len(group) - kernel
        hi = lo + kernel - 1
    return {group[x] for x in range(lo, hi + 1)}


def _dim_matrix(length: int, kernel: int | None, dilation: int, stride: int, causal: bool) -> Tensor:
    """``(length, length)`` bool: ``[i, j]`` = query coordinate ``i`` sees key coordinate ``j``."""
    m = torch.zeros(length, length, dtype=torch.bool)
    if length == 1 or kernel is None:
        return m.fill_(True)
    for i in range(length):
        m[i, sorted(window_1d(i, length, min(kernel, length), dilation, stride, causal))] = True
    return m


def neighborhood_mask(layout: TokenLayout, kernel_size, stride, dilation, is_causal, *,
                      grid_queries_only: bool = False) -> Tensor:
    """Boolean ``(N_q, N)`` mask in ``layout``'s token order (text first or last; text tokens are global).

    ``kernel_size, stride, dilation, is_causal``: triples over ``(frames, height, width)`` (a kernel ``None`` or at
    least the length = the whole dimension). ``grid_queries_only``: the rows are the grid tokens only (``N_q =
    layout.image_tokens``), for ops whose queries are the grid and whose extra keys are global.
    """
    f, h, w = layout.grid
    dims = [_dim_matrix(n, kernel_size[d], dilation[d], stride[d], is_causal[d]) for d, n in enumerate((f, h, w))]
    grid_mask = (dims[0][:, None, None, :, None, None] & dims[1][None, :, None, None, :, None]
                 & dims[2][None, None, :, None, None, :]).reshape(f * h * w, f * h * w)
    n = layout.num_tokens
    img = layout.image_slice()
    full = torch.ones(n, n, dtype=torch.bool)
    full[img, img] = grid_mask
    return full[img] if grid_queries_only else full


def neighborhood_reference(q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout, kernel_size, stride, dilation,
                           is_causal, scale: float | None = None) -> Tensor:
    """Neighbourhood attention by an explicit float32 softmax over :func:`neighborhood_mask`.

    Args:
        q: ``(B, H, N_q, D)`` with ``N_q = layout.num_tokens``, or ``layout.image_tokens`` (grid queries only: the
            layout's text tokens are then extra global keys, text last).
        k, v: ``(B, H, N, D)``, ``N = layout.num_tokens``.
        kernel_size, stride, dilation, is_causal: triples over ``(frames, height, width)``.
        scale: softmax scale (default ``1 / sqrt(D)``).

    Returns:
        ``(B, H, N_q, D)`` in ``q.dtype``.
    """
    grid_only = q.shape[-2] != layout.num_tokens
    mask = neighborhood_mask(layout, kernel_size, stride, dilation, is_causal, grid_queries_only=grid_only)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    s = s.masked_fill(~mask.to(s.device), -math.inf)
    return (torch.softmax(s, -1) @ v.float()).to(q.dtype)
