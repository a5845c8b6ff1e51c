"""The CUDA path of sparse video at flagship sizes, checked on the CPU.

- Every pattern's default, planned at the full token grid of each flagship video model, hands the Triton kernel blocks
  it accepts, and the kernel (Triton interpreter) matches the block-sparse reference on sampled query blocks of that
  grid: the pattern runs once with the kernel call captured, then the captured call is replayed for 8 query blocks
  (reference rows for those queries only; the full reference would not fit in memory).
- ``topk``'s planning memory at Wan-14B 720p geometry, measured with the package's allocation tracker on fake tensors.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from kernel_testutil import interpreter_bf16_dot_fix, require_triton
from torch._subclasses.fake_tensor import FakeTensorMode

from attnplug import SparseVideoConfig, TokenLayout
from attnplug._memory import AllocationTracker
from attnplug.kernels import BlockLUT, block_sparse_reference
from attnplug.methods import CallInfo
from attnplug.methods.patterns import PATTERNS

FLAGSHIP_GRIDS = {
    "wan-480p-81": (21, 30, 52), "wan-720p-81": (21, 45, 80), "hunyuanvideo-720p-129": (33, 45, 80),
    "cogvideox-480x720-49": (13, 30, 45), "ltx-704x480-161": (21, 15, 22),
    "wan2.2-ti2v-5b-704x1280-121": (31, 22, 40), "hunyuanvideo-544p-129": (33, 34, 60),
}
#: The interpreter costs about a millisecond per tile operation: the default run covers every pattern on the
#: smallest grid and the default (tiles) in bf16 on Wan 480p; every grid runs with -m slow.
FAST = ("ltx-704x480-161",)
FAST_CASES = {("wan-480p-81", "tiles", torch.bfloat16)}
SAMPLED_BLOCKS = 8


def _capture(monkeypatch, module):
    """Replace ``run_block_sparse`` in a pattern module by a recorder that returns zeros (the kernel's fake)."""
    calls = []

    def record(q, k, v, lut, scale, config, kv_keep=None, damp=None, damp_factor=1.0):
        assert damp is None, "the sparse video patterns run undamped"
        calls.append((q, k, v, lut, scale, kv_keep))
        stats = None
        if config.effective_threshold is not None:
            zero = torch.zeros((), dtype=torch.int64)
            stats = {"visited_blocks": zero + 1, "skipped_blocks": zero, "density": zero.double() + 1}
        return torch.zeros_like(q), stats

    monkeypatch.setattr(module, "run_block_sparse", record)
    return calls


def _replay_sampled(q, k, v, lut: BlockLUT, scale, kv_keep, seed=0):
    """The captured kernel call for ``SAMPLED_BLOCKS`` query blocks: Triton interpreter vs the reference."""
    from attnplug.kernels.block_sparse.triton import block_sparse_triton

    m = lut.num_q_blocks
    blocks = torch.randperm(m, generator=torch.Generator().manual_seed(seed))[:SAMPLED_BLOCKS].sort().values
    bm = lut.block_m
    rows = torch.cat([torch.arange(i * bm, min(q.shape[2], (i + 1) * bm)) for i in blocks.tolist()])
    # Only whole blocks keep the kernel's row -> LUT-row mapping: drop a partial last block from the sample.
    whole = [i for i in blocks.tolist() if (i + 1) * bm <= q.shape[2]]
    rows = torch.cat([torch.arange(i * bm, (i + 1) * bm) for i in whole])
    sub = BlockLUT(lut.indices[:, :, whole].contiguous(), lut.counts[:, :, whole].contiguous(), bm, lut.block_n,
                   trusted=True, key_blocks=lut.key_blocks)
    qs = q[:, :, rows].contiguous()
    keep = {} if kv_keep is None else {"kv_keep": kv_keep}
    out, _ = block_sparse_triton(qs, k, v, sub, neighborhood=None, scale=scale, threshold=None, **keep)
    ref = block_sparse_reference(qs.float(), k.float(), v.float(), sub, scale=scale, **keep)
    return out.float(), ref, len(whole)


def _cases():
    for name, grid in FLAGSHIP_GRIDS.items():
        for pattern in PATTERNS:
            for dtype, tag in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
                fast = name in FAST or (name, pattern, dtype) in FAST_CASES
                yield pytest.param(grid, pattern, dtype, id=f"{name}-{pattern}-{tag}",
                                   marks=() if fast else pytest.mark.slow)


@pytest.mark.parametrize("grid,pattern,dtype", list(_cases()))
def test_default_runs_on_the_triton_kernel_at_flagship_geometry(monkeypatch, grid, pattern, dtype):
    require_triton()
    from attnplug.kernels.block_sparse.triton import kernel_config

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    import importlib

    config = SparseVideoConfig(pattern=pattern, backend="triton")
    method = config.build()
    module = importlib.import_module(type(method.pattern).__module__)
    base = importlib.import_module("attnplug.methods.patterns.base")
    calls = _capture(monkeypatch, module) if hasattr(module, "run_block_sparse") else _capture(monkeypatch, base)
    layout = TokenLayout(*grid)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, layout.num_tokens, 64, generator=gen).to(dtype) for _ in range(3))
    method.prepare(layout, CallInfo(step=0))
    assert method(q, k, v, layout, None, CallInfo(step=5)) is not None
    assert len(calls) == 1, "the pattern made no block-sparse call"
    cq, ck, cv, lut, scale, kv_keep = calls[0]
    kernel_config(cq.shape[-1], lut.block_m, lut.block_n, dtype, config.effective_threshold is not None)
    interpreting = not torch.cuda.is_available()
    fix = interpreter_bf16_dot_fix() if interpreting and dtype == torch.bfloat16 else contextlib.nullcontext()
    with fix:
        out, ref, sampled = _replay_sampled(cq, ck, cv, lut, scale, kv_keep)
    assert sampled >= SAMPLED_BLOCKS - 1
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)


def test_topk_planning_memory_at_wan14b_720p():
    """One (B, H, M, M) score tensor in q's dtype plus the table at most, beyond q/k/v (and their reordered copies)
    and the output (and its reordered copy): no float64 block mask and no host copy (H 40, M 1,182, D 128, bf16)."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    layout = TokenLayout(21, 45, 80)
    method = SparseVideoConfig(pattern="topk", backend="triton").build()
    plan = method.pattern.plan(layout, "cpu")
    b, h, n, d = 1, 40, layout.num_tokens, 128
    m = -(-n // plan.block)
    budget = -(-m // 4)
    with FakeTensorMode(allow_non_fake_inputs=True):
        q, k, v = (torch.empty(b, h, n, d, dtype=torch.bfloat16) for _ in range(3))
        with AllocationTracker() as mem:
            res = method.pattern.run(q, k, v, plan, CallInfo(scale=d ** -0.5))
    assert res.out.shape == q.shape
    qkv = q.numel() * q.element_size()
    copies = (3 if plan.perm is not None else 0) * qkv + (2 if plan.perm is not None else 1) * qkv
    scores = b * h * m * m * q.element_size()
    table = b * h * m * budget * 4
    assert mem.peak <= copies + scores + table, (mem.peak / 2**20, copies / 2**20, scores / 2**20, table / 2**20)


def test_allocation_tracker_counts_new_storages_only():
    x = torch.randn(1000)
    with AllocationTracker() as mem:
        y = x * 2  # 4000 bytes
        z = y[:10]  # a view: no new storage
        del y
        w = torch.empty(500)  # 2000 bytes while z keeps y's storage alive
        x.add_(1)  # in place on an outside storage: not counted
    assert mem.peak == 6000 and mem.current == 6000
    del z, w
    assert mem.current == 0
