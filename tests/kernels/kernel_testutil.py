"""Shared helpers for the kernel tests (plain functions, no fixtures)."""

from __future__ import annotations

import itertools
import math

import torch

from attnplug.kernels import BlockLUT, NeighborhoodMask

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def qkv(batch, heads, n, dim, dtype=torch.float32, seed=0, n_k=None, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    n_k = n if n_k is None else n_k
    q = torch.randn(batch, heads, n, dim, generator=g)
    k = torch.randn(batch, heads, n_k, dim, generator=g)
    v = torch.randn(batch, heads, n_k, dim, generator=g)
    return q.to(device, dtype), k.to(device, dtype), v.to(device, dtype)


def random_lut(lb, lh, n_q, n_k, block_m, block_n, density=0.5, seed=0, empty_row=True, full_row=True,
               shuffle=True):
    """Random LUT (B|1, H|1, Mq, *) with one empty and one full row, entries in random order."""
    g = torch.Generator().manual_seed(seed)
    mq, mk = math.ceil(n_q / block_m), math.ceil(n_k / block_n)
    mask = torch.rand(lb, lh, mq, mk, generator=g) < density
    if empty_row:
        mask[..., 0, :] = False
    if full_row and mq > 1:
        mask[..., 1, :] = True
    lut = BlockLUT.from_block_mask(mask, block_m, block_n)
    if not shuffle:
        return lut
    order = torch.argsort(torch.rand(lut.indices.shape, generator=g), dim=-1)
    width = lut.max_k_blocks
    valid = torch.arange(width) < lut.counts[..., None]
    # shuffle only among valid entries: sort keys put valid entries first in random order
    keys = torch.where(valid, torch.rand(lut.indices.shape, generator=g), torch.full(lut.indices.shape, 2.0))
    order = torch.argsort(keys, dim=-1)
    return BlockLUT(torch.gather(lut.indices, -1, order).contiguous(), lut.counts, block_m, block_n)


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


def _dim_allowed_set(i: int, length: int, k: int, d: int, s: int, causal: bool) -> set[int]:
    """Allowed key coordinates of query coordinate i, by listing the dilation group and slicing it."""
    group = [j for j in range(length) if j % d == i % d]  # i's dilation group, in order
    a = group.index(i)
    if causal:  # the stride group's last position leads; a query still sees nothing after itself
        leader = min((a // s) * s + s - 1, len(group) - 1)
        window = group[max(0, leader - k + 1): a + 1]
    else:
        centre = min((a // s) * s + s // 2, len(group) - 1)  # GNA: the stride group's centre shares its window
        start = centre - k // 2
        start = max(0, min(start, len(group) - k))  # inward: shift the window back inside the group
        window = group[start: start + k]
    return set(window)


def brute_force_mask(nb: NeighborhoodMask, n_q: int, n_k: int) -> torch.Tensor:
    f, h, w = nb.grid
    n_grid = f * h * w
    mask = torch.zeros(n_q, n_k, dtype=torch.bool)
    coords = list(itertools.product(range(f), range(h), range(w)))
    for qi in range(n_q):
        if qi >= n_grid:
            mask[qi] = True
            continue
        per_dim = [
            _dim_allowed_set(c, nb.grid[d], nb.kernel_size[d], nb.dilation[d], nb.stride[d], nb.is_causal[d])
            for d, c in enumerate(coords[qi])
        ]
        for kj in range(n_k):
            if kj >= n_grid:
                mask[qi, kj] = True
            else:
                kc = coords[kj]
                mask[qi, kj] = all(kc[d] in per_dim[d] for d in range(3))
    return mask


def peaked_inputs(n=128, dim=32, block=16, seed=0):
    """Keys whose blocks score very differently against every query, so that skipping really happens."""
    g = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
    q = (u * 6.0 + 0.05 * torch.randn(1, 2, n, dim, generator=g))
    level = torch.linspace(3.0, -3.0, n // block).repeat_interleave(block)  # block j has score ~ 6 * level * scale
    k = level[None, None, :, None] * u * 4.0 + 0.05 * torch.randn(1, 2, n, dim, generator=g)
    v = torch.randn(1, 2, n, dim, generator=g)
    return q, k, v




def kv_keep_mask(batch, n_k, keep=0.7, seed=0):
    """Random bool key-keep mask ``(batch, n_k)`` (True = attend) with a different pattern per batch entry."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n_k, generator=g) < keep
