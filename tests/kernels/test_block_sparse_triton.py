"""Triton kernel vs the reference: on CUDA when present, else under TRITON_INTERPRET=1 (set by conftest.py).

The interpreter costs about a millisecond per program and tile operation, so shapes stay tiny and cases few.
"""

from __future__ import annotations

import inspect
import math
import os

import pytest
import torch
from kernel_testutil import (
    TOL,
    brute_force_mask,
    interpreter_bf16_dot_fix,
    max_err,
    peaked_inputs,
    qkv,
    random_lut,
    reference_with_keep,
    strided_qkv,
)

from attnplug.kernels import BlockLUT, NeighborhoodMask, block_sparse_attention, block_sparse_reference

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)

from attnplug.kernels.block_sparse import triton as bst  # noqa: E402  (after TRITON_INTERPRET is set)
from attnplug.kernels.block_sparse.arch_configs import ARCH_CONFIGS, arch_of, kernel_config  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _interpreter_bf16_dots():
    if DEVICE == "cuda":
        yield
    else:
        with interpreter_bf16_dot_fix():
            yield


def _run(q, k, v, lut, **kw):
    return block_sparse_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), lut.to(DEVICE) if lut else None,
                                  backend="triton", return_stats=True, **kw)


def _kernel(q, k, v, lut, kv_keep=None, neighborhood=None, threshold=None):
    """The kernel itself (no dispatcher): ``(out, skipped)`` on the CPU."""
    def to(x):
        return None if x is None else x.to(DEVICE)

    scale = 1.0 / math.sqrt(q.shape[-1])
    out, skipped = bst.block_sparse_triton(to(q), to(k), to(v), lut.to(DEVICE), neighborhood=neighborhood,
                                           scale=scale, threshold=threshold, kv_keep=to(kv_keep))
    return out.cpu(), skipped.cpu()


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
    keep = torch.ones(1, 32, dtype=torch.bool, device=DEVICE)

    def f(q, k, v, keep):
        return torch.ops.attnplug.block_sparse_fwd(q, k, v, lut.indices, lut.counts, keep, 16, 16, [], 0.25, None)

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    out, skipped = compiled(q, k, v, keep)
    assert max_err(out.cpu(), block_sparse_reference(q.cpu(), k.cpu(), v.cpu(), scale=0.25)) < 1e-5
    assert skipped.shape == (1, 1, 2) and skipped.dtype == torch.int32


def test_threshold_needs_power_of_two_blocks():
    q, k, v = qkv(1, 1, 48, 16)
    lut = BlockLUT.full(48, 48, 48, 16)
    with pytest.raises(ValueError, match="power of two"):
        _run(q, k, v, lut, threshold=4.0)


def test_block_sizes_must_suit_the_kernel():
    q, k, v = qkv(1, 1, 48, 16)
    with pytest.raises(ValueError, match="divisible by 16"):
        _run(q, k, v, BlockLUT.full(48, 48, 24, 24))


# ------------------------------------------------------------------------------------------------------ kv_keep
def test_kv_keep_per_batch_masks_keys_and_empties_rows():
    # batch 2, per-batch keep; batch 1 excludes every key of query block 1's LUT row -> those rows are zeros.
    n = 48
    q, k, v = qkv(2, 2, n, 32, dtype=torch.float16, seed=5)
    lut = random_lut(1, 2, n, n, 16, 16, density=0.6, seed=5)
    g = torch.Generator().manual_seed(5)
    keep = torch.rand(2, n, generator=g) < 0.6
    keep[1] = False
    keep[1, -5:] = True  # only the last key block survives in batch 1
    out, skipped = _kernel(q, k, v, lut, kv_keep=keep)
    ref = reference_with_keep(q, k, v, lut, keep)
    assert max_err(out, ref) < TOL[torch.float16]
    assert torch.all(out[1, :, :16] == 0) and torch.all(skipped == 0)
    assert max_err(out, reference_with_keep(q, k, v, lut, torch.ones_like(keep))) > 0.1  # the mask mattered


def test_kv_keep_broadcast_batch_with_neighborhood_fp32():
    nb = NeighborhoodMask((2, 4, 5), (1, 3, 3))
    n = nb.num_grid_tokens + 6  # 6 global tokens last, the padded ones among them
    q, k, v = qkv(2, 1, n, 16, seed=6)
    keep = torch.ones(1, n, dtype=torch.bool)
    keep[0, -4:] = False  # padded slots
    keep[0, 3] = False
    lut = nb.block_lut(n, 16, 16)
    out, _ = _kernel(q, k, v, lut, kv_keep=keep, neighborhood=nb)
    assert max_err(out, reference_with_keep(q, k, v, lut, keep, neighborhood=nb)) < TOL[torch.float32]


def test_kv_keep_with_threshold_skips_like_the_reference():
    if "kv_keep" not in inspect.signature(block_sparse_reference).parameters:
        pytest.skip("block_sparse_reference does not take kv_keep yet")
    q, k, v = peaked_inputs(n=64, dim=32, block=16)
    keep = torch.ones(1, 64, dtype=torch.bool)
    keep[0, 16:24] = False  # half of the second-highest-scoring key block
    lut = BlockLUT.full(64, 64, 16, 16)
    out, skipped = _kernel(q, k, v, lut, kv_keep=keep, threshold=8.0)
    ref, stats = block_sparse_reference(q, k, v, lut, threshold=8.0, kv_keep=keep, return_stats=True)
    assert max_err(out, ref) < TOL[torch.float32]
    assert int(skipped.sum()) == stats["skipped_blocks"] > 0


def test_kv_keep_is_checked():
    q, k, v = qkv(2, 1, 32, 16)
    lut = BlockLUT.full(32, 32, 16, 16)
    with pytest.raises(ValueError, match=r"kv_keep must be a bool tensor of shape \(1 or 2, 32\)"):
        _kernel(q, k, v, lut, kv_keep=torch.ones(3, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="kv_keep must be a bool tensor"):
        _kernel(q, k, v, lut, kv_keep=torch.ones(2, 32))


# ------------------------------------------------------------------------------- dtypes, head dims, strided views
@pytest.mark.parametrize(
    "dtype, dim",
    [(torch.bfloat16, 40), (torch.float16, 72), (torch.float32, 96), (torch.bfloat16, 128), (torch.float16, 64),
     (torch.float32, 40)],
)
def test_strided_bnhd_views(dtype, dim):
    q, k, v = strided_qkv(1, 2, 37, dim, dtype=dtype, seed=dim)
    assert q.stride(2) == 2 * dim  # (B, N, H, D) storage
    lut = random_lut(1, 1, 37, 37, 16, 32, density=0.7, seed=dim)
    out, _ = _kernel(q, k, v, lut)
    assert out.dtype == dtype and out.shape == q.shape
    assert max_err(out, block_sparse_reference(q, k, v, lut)) < TOL[dtype]


# ------------------------------------------------------------------------------------- offsets and launch grid
def test_row_offsets_are_int64():
    # (start + i) * stride passes 2^31: a (B, N, H, D) view with N = 2^20 rows and H * D = 5120.
    start, stride = 2**20 + 3, 5120
    out = torch.zeros(16, dtype=torch.int64, device=DEVICE)
    bst.row_offsets_kernel[(1,)](out, start, stride, 16)
    expected = (torch.arange(16, dtype=torch.int64) + start) * stride
    assert expected.max() > 2**31 and torch.equal(out.cpu(), expected)


def test_every_row_offset_goes_through_the_int64_helper():
    src = inspect.getsource(bst._bsa_fwd_kernel.fn)
    for stride in ("stride_qn", "stride_kn", "stride_vn", "stride_on"):
        uses = src.count(stride)
        assert uses == 2, (stride, uses)  # the parameter list and one _rows64 call
        assert f"{stride}, ALIGN)" in src and "_rows64(offs_" in src


@pytest.mark.parametrize("bh", [1, 7, 65535, 65536, 3 * 65535 + 1, 2**17 + 11, 2**20 - 1, 2**20])
def test_fold_batch_heads_stays_in_cuda_limits(bh):
    gy, gz = bst.fold_batch_heads(bh)
    assert 1 <= gy <= bst.GRID_YZ_LIMIT == 65535 and 1 <= gz <= 65535
    assert bh <= gy * gz < bh + gz  # every (batch, head) covered; fewer than gz idle programs


def test_fold_batch_heads_is_a_bijection_and_refuses_too_many():
    for bh in range(1, 65):
        gy, gz = bst.fold_batch_heads(bh, cap=8)
        served = sorted(z * gy + y for z in range(gz) for y in range(gy) if z * gy + y < bh)
        assert served == list(range(bh)) and gy <= 8 and gz <= 8
    with pytest.raises(ValueError, match="batch x heads = 65 cannot be launched"):
        bst.fold_batch_heads(65, cap=8)


def test_folded_grid_runs_in_the_interpreter(monkeypatch):
    monkeypatch.setattr(bst, "GRID_YZ_LIMIT", 8)
    assert bst.fold_batch_heads(9) == (5, 2)  # 10 programs for 9 (batch, head) pairs: one idle
    q, k, v = qkv(3, 3, 20, 16, dtype=torch.float16, seed=7)
    lut = random_lut(3, 3, 20, 20, 16, 16, density=0.7, seed=7, empty_row=False)
    keep = torch.rand(3, 20, generator=torch.Generator().manual_seed(7)) < 0.8
    out, skipped = _kernel(q, k, v, lut, kv_keep=keep)
    assert max_err(out, reference_with_keep(q, k, v, lut, keep)) < TOL[torch.float16]
    assert skipped.shape == (3, 3, 2)


# ----------------------------------------------------------------------------------- per-architecture configs
def test_arch_table_rows_and_lookup():
    archs = {a for a, _ in ARCH_CONFIGS}
    assert archs == {80, 90, 100, 120}
    assert {p for _, p in ARCH_CONFIGS} == {"16bit", "tf32", "fp32"}
    assert bst.launch_arch(torch.device("cpu")) == 80  # the interpreter runs the sm_80 row
    assert [arch_of(c) for c in [(8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (10, 3), (12, 0), (12, 1)]] == [
        80, 80, 80, 90, 100, 100, 120, 120]
    h100 = kernel_config(128, 128, 64, torch.bfloat16, False, arch=90)
    assert (h100["BLOCK_M"], h100["BLOCK_N"], h100["num_warps"], h100["num_stages"]) == (128, 64, 8, 3)
    a100 = kernel_config(128, 128, 64, torch.float16, False)
    assert a100["BLOCK_M"] <= 64 and a100["D_PAD"] == 128
    assert kernel_config(40, 64, 64, torch.float16, True, arch=90)["BLOCK_M"] == 64  # threshold: tiles = blocks
    assert kernel_config(72, 128, 64, torch.float32, False, arch=90)["BLOCK_M"] == 32  # IEEE fp32: small tiles
    assert kernel_config(72, 128, 64, torch.float32, False, arch=90, tf32=True)["BLOCK_M"] == 64


class _Recorder:
    """Stands in for the JIT kernel: records the launch grid and keyword arguments."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **meta: self.calls.append((grid, meta))


@pytest.mark.parametrize("allow_tf32", [False, True])
def test_fp32_dots_follow_allow_tf32_at_launch(monkeypatch, allow_tf32):
    rec = _Recorder()
    monkeypatch.setattr(bst, "_bsa_fwd_kernel", rec)
    q, k, v = qkv(1, 1, 32, 16)
    before = torch.backends.cuda.matmul.allow_tf32  # (a cuBLAS flag object: monkeypatch cannot restore it)
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    try:
        _kernel(q, k, v, BlockLUT.full(32, 32, 128, 64))
        _kernel(q.half(), k.half(), v.half(), BlockLUT.full(32, 32, 16, 16))
        assert torch.backends.cuda.matmul.allow_tf32 is allow_tf32  # read, never set
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    (_, fp32), (_, fp16) = rec.calls
    assert fp32["IEEE_DOT"] is (not allow_tf32) and fp16["IEEE_DOT"] is False
    assert fp32["BLOCK_M"] == (64 if allow_tf32 else 32)  # sm_80 rows: tf32 64 x 32, IEEE fp32 32 x 32


def test_launch_uses_the_table_row_and_stride_alignment(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(bst, "_bsa_fwd_kernel", rec)
    q, k, v = strided_qkv(2, 3, 130, 40, dtype=torch.float16)
    _kernel(q, k, v, BlockLUT.full(130, 130, 128, 64))
    grid, meta = rec.calls[0]
    row = ARCH_CONFIGS[(80, "16bit")]
    assert grid == (math.ceil(130 / meta["BLOCK_M"]), 6, 1)
    assert (meta["num_warps"], meta["num_stages"]) == (row.num_warps, row.num_stages)
    assert meta["BLOCK_M"] == min(128, row.max_tile_m) and meta["ALIGN"] == 8  # strides 40 and 120: 8 | both


def test_stride_alignment_hint():
    assert bst.stride_alignment(torch.empty(2, 3, 5, 64)) == 16
    assert bst.stride_alignment(torch.empty(2, 3, 5, 64), torch.empty(1, 3, 5, 40)) == 8
    assert bst.stride_alignment(torch.empty(2, 5, 3, 72).transpose(1, 2)) == 8  # strides 1080, 72, 216
    assert bst.stride_alignment(torch.empty(2, 3, 5, 6)) == 2
    assert bst.stride_alignment(torch.empty(128).as_strided((2, 1, 4, 16), (64, 1, 16, 1))) == 16  # size-1 dim
    assert bst.stride_alignment(torch.empty(2, 3, 5, 64).expand(2, 3, 5, 64)[:, :, :, :]) == 16
