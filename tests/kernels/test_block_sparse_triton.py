"""Triton kernel vs the reference: on CUDA when present, else under TRITON_INTERPRET=1 (set by conftest.py).

The interpreter costs about a millisecond per program and tile operation, so shapes stay tiny and cases few.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from kernel_testutil import TOL, brute_force_mask, max_err, peaked_inputs, qkv, random_lut

from attnplug.kernels import BlockLUT, NeighborhoodMask, block_sparse_attention, block_sparse_reference

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)

from attnplug.kernels.block_sparse import triton as bst  # noqa: E402  (after TRITON_INTERPRET is set)


def _run(q, k, v, lut, **kw):
    return block_sparse_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), lut.to(DEVICE) if lut else None,
                                  backend="triton", return_stats=True, **kw)


def test_random_lut_fp32_subtiled_keys():
    # LUT key blocks of 128 are walked as four 32-key tiles (fp32); per-head rows, an empty and a full row.
    q, k, v = qkv(1, 2, 200, 64, seed=1)
    lut = random_lut(1, 2, 200, 200, 64, 128, density=0.6, seed=1)
    out, stats = _run(q, k, v, lut)
    assert max_err(out.cpu(), block_sparse_reference(q, k, v, lut)) < TOL[torch.float32]
    assert stats["backend"] == "triton" and stats["skipped_blocks"] == 0
    assert torch.all(out[:, :, :64] == 0)


def test_random_lut_fp16_ragged_head_dim_40_batch_2():
    q, k, v = qkv(2, 1, 67, 40, dtype=torch.float16, seed=2)
    lut = random_lut(2, 1, 67, 67, 16, 16, density=0.5, seed=2)
    out, _ = _run(q, k, v, lut)
    assert out.dtype == torch.float16
    assert max_err(out.cpu(), block_sparse_reference(q, k, v, lut)) < TOL[torch.float16]


@pytest.mark.parametrize(
    "nb",
    [
        NeighborhoodMask((2, 5, 6), (1, 3, 5), dilation=(1, 1, 1)),
        NeighborhoodMask((2, 5, 6), (2, 3, 3), dilation=(1, 1, 2), is_causal=(True, False, False),
                         stride=(1, 2, 1)),
    ],
    ids=["plain", "dil-causal-stride"],
)
def test_neighborhood_global_tokens_fp16(nb):
    n = nb.num_grid_tokens + 7  # 7 text tokens last
    q, k, v = qkv(1, 2, n, 64, dtype=torch.float16, seed=3)
    lut = nb.block_lut(n, 32, 32)
    out, _ = _run(q, k, v, lut, neighborhood=nb)
    assert max_err(out.cpu(), block_sparse_reference(q, k, v, neighborhood=nb)) < TOL[torch.float16]


def test_threshold_matches_reference_semantics_and_bound():
    q, k, v = peaked_inputs(n=96, dim=32, block=16)
    lut = BlockLUT.full(96, 96, 16, 16)
    thr = 8.0
    out, stats = _run(q, k, v, lut, threshold=thr)
    ref, ref_stats = block_sparse_reference(q, k, v, lut, threshold=thr, return_stats=True)
    assert stats["skipped_blocks"] == ref_stats["skipped_blocks"] > 0
    assert max_err(out.cpu(), ref) < TOL[torch.float32]
    exact = block_sparse_reference(q, k, v, lut)
    assert max_err(out.cpu(), exact) <= 2 * v.abs().max() * 6 * 16 * math.exp(-thr)


@pytest.mark.parametrize(
    "nb",
    [
        NeighborhoodMask((3, 4, 9), (3, 3, 3), stride=(1, 2, 3)),
        NeighborhoodMask((4, 3, 8), (2, 3, 4), dilation=(2, 1, 2), is_causal=(True, False, True), stride=(1, 1, 2)),
    ],
    ids=["no-dilation", "dilation"],
)
def test_device_mask_function_matches_brute_force(nb):
    n = nb.num_grid_tokens + 3
    idx = torch.arange(n, dtype=torch.int32, device=DEVICE)
    out = torch.empty(n, n, dtype=torch.int8, device=DEVICE)
    dil = max(nb.dilation) > 1
    grid = (triton.cdiv(n, 32), triton.cdiv(n, 32))
    bst.na_allowed_kernel[grid](idx, idx, out, n, n, *nb.grid, *nb.kernel_size, *nb.dilation, *nb.stride,
                                *nb.is_causal, dil, 32, 32)
    assert torch.equal(out.cpu().bool(), brute_force_mask(nb, n, n))


def test_custom_op_traces_as_one_op():
    q, k, v = (x.to(DEVICE) for x in qkv(1, 1, 32, 16, seed=4))
    lut = BlockLUT.full(32, 32, 16, 16, device=DEVICE)

    def f(q, k, v):
        return torch.ops.attnplug.block_sparse_fwd(q, k, v, lut.indices, lut.counts, 16, 16, [], 0.25, None)[0]

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    assert max_err(compiled(q, k, v).cpu(), block_sparse_reference(q.cpu(), k.cpu(), v.cpu(), scale=0.25)) < 1e-5


def test_threshold_needs_power_of_two_blocks():
    q, k, v = qkv(1, 1, 48, 16)
    lut = BlockLUT.full(48, 48, 48, 16)
    with pytest.raises(ValueError, match="power of two"):
        _run(q, k, v, lut, threshold=4.0)


def test_autotune_prune_reads_constexpr_keyword_arguments():
    # Triton passes constexprs to early_config_prune as keyword arguments, not in named_args.
    pruned = bst._prune(bst.AUTOTUNE_CONFIGS, {"Q": None}, BLOCK_M=32, D_PAD=64)
    assert [c.num_warps for c in pruned] == [8]
    assert {c.num_warps for c in bst._prune(bst.AUTOTUNE_CONFIGS, {}, BLOCK_M=64, D_PAD=32)} == {4, 8}


def test_block_sizes_must_suit_the_kernel():
    q, k, v = qkv(1, 1, 48, 16)
    with pytest.raises(ValueError, match="divisible by 16"):
        _run(q, k, v, BlockLUT.full(48, 48, 24, 24))
