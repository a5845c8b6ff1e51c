"""Shared helpers for the kernel tests (plain functions, no fixtures)."""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import os

import pytest
import torch

from attnplug.kernels import BlockLUT, NeighborhoodMask

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def require_triton() -> None:
    """Skip the calling test unless Triton can run here: on CUDA, or in the interpreter (``TRITON_INTERPRET=1``,
    which the kernel tests' conftest sets without CUDA)."""
    pytest.importorskip("triton")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not 1")


def prepare_backend(backend: str, monkeypatch) -> None:
    """Make block-sparse ``backend`` runnable in a test: Triton required (:func:`require_triton`), flex run eagerly
    (no compile in the tests); the other backends need nothing."""
    if backend == "triton":
        require_triton()
    elif backend == "flex":
        from attnplug.kernels.block_sparse import flex as bs_flex

        monkeypatch.setattr(bs_flex, "EAGER", True)


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


def strided_qkv(batch, heads, n, dim, dtype=torch.float32, seed=0, n_k=None):
    """q, k, v ``(B, H, N, D)`` as transposed views of ``(B, N, H, D)`` tensors (row stride ``H * D``)."""
    g = torch.Generator().manual_seed(seed)
    n_k = n if n_k is None else n_k
    views = []
    for length in (n, n_k, n_k):
        x = torch.randn(batch, length, heads * dim, generator=g).to(dtype)
        views.append(x.view(batch, length, heads, dim).transpose(1, 2))
    return tuple(views)


def lut_token_mask(lut: BlockLUT, n_q: int, n_k: int) -> torch.Tensor:
    """Bool ``(B|1, H|1, n_q, n_k)``: True where the key's block is listed for the query's block."""
    blocks = lut.to_block_mask(math.ceil(n_k / lut.block_n))
    return blocks[:, :, torch.arange(n_q) // lut.block_m][:, :, :, torch.arange(n_k) // lut.block_n]


def dense_masked_attention(q, k, v, allowed, scale=None):
    """fp32 softmax attention of ``q (B, H, N_q, D)`` over the keys ``allowed`` (bool, broadcast to
    ``(B, H, N_q, N_k)``); rows without an allowed key are zeros."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed.expand_as(scores), -math.inf)
    empty = torch.isneginf(scores.amax(-1, keepdim=True))
    weights = torch.softmax(scores.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0)
    return torch.matmul(weights, v.float())


def reference_with_keep(q, k, v, lut, kv_keep, neighborhood=None, scale=None):
    """``block_sparse_reference`` with ``kv_keep`` (bool ``(B|1, N_k)``): the reference's own support when it has
    it, else the LUT, neighbourhood and kept keys applied through :func:`dense_masked_attention`."""
    from attnplug.kernels import block_sparse_reference

    if "kv_keep" in inspect.signature(block_sparse_reference).parameters:
        return block_sparse_reference(q, k, v, lut, neighborhood=neighborhood, scale=scale, kv_keep=kv_keep)
    n_q, n_k = q.shape[2], k.shape[2]
    allowed = lut_token_mask(lut, n_q, n_k) & kv_keep[:, None, None, :]
    if neighborhood is not None:
        allowed = allowed & neighborhood.allowed(torch.arange(n_q)[:, None], torch.arange(n_k)[None, :])
    return dense_masked_attention(q, k, v, allowed, scale)


@contextlib.contextmanager
def interpreter_bf16_dot_fix():
    """Makes the Triton interpreter's ``tl.dot`` read bf16 operands as numbers.

    The interpreter keeps bf16 tensors as their uint16 bit patterns and ``np.matmul``s the bits (Triton 3.9); widening
    to fp32 (exact) and accumulating in fp32 is what the GPU's bf16 MMA does.
    """
    import numpy as np
    import pytest
    from triton.runtime import interpreter

    original = interpreter.InterpreterBuilder.create_dot

    def widen(h):
        if not h.dtype.scalar.is_bf16():
            return h
        bits = h.data.view(np.uint16).astype(np.uint32) << 16
        return interpreter.TensorHandle(bits.view(np.float32), interpreter.tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)
        yield
