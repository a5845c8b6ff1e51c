"""Shared helpers for the kernel tests (plain functions, no fixtures)."""

from __future__ import annotations

import math

import torch

from attnplug.kernels import BlockLUT

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
