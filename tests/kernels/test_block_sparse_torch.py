"""Torch (CPU) path and dispatcher of block_sparse_attention vs the dense fp32 reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from kernel_testutil import TOL, kv_keep_mask, max_err, peaked_inputs, qkv, random_lut

from attnplug.kernels import BlockLUT, NeighborhoodMask, block_sparse_attention, block_sparse_reference
from attnplug.kernels.block_sparse.reference import threshold_keep_mask


# ------------------------------------------------------------------------------------------------ reference itself
def test_reference_equals_sdpa_with_boolean_mask():
    q, k, v = qkv(2, 2, 67, 32)
    lut = random_lut(2, 1, 67, 67, 16, 16, seed=3)
    mask = lut.to_block_mask(5)  # (2, 1, 5, 5)
    token = mask[:, :, torch.arange(67) // 16][:, :, :, torch.arange(67) // 16]
    rows = token.any(-1, keepdim=True)
    expect = F.scaled_dot_product_attention(q, k, v, attn_mask=token).masked_fill(~rows, 0)
    got = block_sparse_reference(q, k, v, lut)
    assert max_err(got, expect) < 1e-5
    assert torch.all(got[:, :, :16] == 0)  # row 0 of the LUT is empty


def test_reference_without_mask_is_sdpa():
    q, k, v = qkv(1, 2, 50, 16, n_k=70)
    assert max_err(block_sparse_reference(q, k, v), F.scaled_dot_product_attention(q, k, v)) < 1e-5


# ------------------------------------------------------------------------------------------------ torch path
@pytest.mark.parametrize("dim", [40, 64, 80, 128])
@pytest.mark.parametrize("n", [67, 200])
def test_torch_random_lut_fp32(n, dim):
    q, k, v = qkv(2, 3, n, dim, seed=n + dim)
    lut = random_lut(2, 3, n, n, 32, 16, seed=dim)  # per-batch, per-head rows; row 0 empty, row 1 full
    out, stats = block_sparse_attention(q, k, v, lut, backend="torch", return_stats=True)
    ref = block_sparse_reference(q, k, v, lut)
    assert max_err(out, ref) < TOL[torch.float32]
    assert stats["visited_blocks"] == int(lut.counts.sum()) and stats["skipped_blocks"] == 0
    assert stats["backend"] == "torch" and math.isclose(stats["density"], lut.density(n, n))
    assert torch.all(out[:, :, :32] == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_half(dtype):
    q, k, v = qkv(2, 2, 200, 64, dtype=dtype, seed=5)
    lut = random_lut(1, 2, 200, 200, 64, 32, seed=7)
    out = block_sparse_attention(q, k, v, lut, backend="torch")
    assert out.dtype == dtype
    assert max_err(out, block_sparse_reference(q, k, v, lut)) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n", [200, 256])
def test_torch_long_rows_chunked_by_lse(monkeypatch, n, dtype):
    """Long unmasked rows are attended in key chunks merged by log-sum-exp: same result as one call."""
    from attnplug.kernels.block_sparse import torch as bs_torch

    monkeypatch.setattr(bs_torch, "CHUNK_ABOVE_KEYS", 32)
    monkeypatch.setattr(bs_torch, "CHUNK_KEYS", 32)  # 2 blocks of 16 per chunk; n=200 has a ragged last block
    q, k, v = qkv(2, 2, n, 64, dtype=dtype, seed=n)
    lut = random_lut(2, 2, n, n, 32, 16, density=0.7, seed=n)
    calls = []
    monkeypatch.setattr(bs_torch, "_sdpa_chunked", _counting(bs_torch._sdpa_chunked, calls))
    out = block_sparse_attention(q, k, v, lut, backend="torch")
    assert calls, "no row took the chunked path"
    assert out.dtype == dtype
    assert max_err(out, block_sparse_reference(q, k, v, lut)) < TOL[dtype]


def _counting(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)
    return wrapped


def test_torch_cross_attention_lengths():
    q, k, v = qkv(2, 2, 90, 40, n_k=77, seed=2)
    lut = random_lut(1, 1, 90, 77, 32, 16, seed=2)
    assert max_err(block_sparse_attention(q, k, v, lut, backend="torch"), block_sparse_reference(q, k, v, lut)) < 1e-5


NEIGHBORHOODS = [
    NeighborhoodMask((1, 12, 14), (1, 5, 7)),
    NeighborhoodMask((3, 6, 8), (3, 3, 5), dilation=(1, 2, 1), stride=(1, 1, 2)),
    NeighborhoodMask((4, 5, 6), (2, 3, 3), is_causal=(True, False, False), stride=(2, 1, 3)),
]


@pytest.mark.parametrize("nb", NEIGHBORHOODS, ids=["2d", "3d-dil-stride", "causal"])
@pytest.mark.parametrize("text", [0, 13])
def test_torch_neighborhood_with_global_tokens(nb, text):
    n = nb.num_grid_tokens + text
    q, k, v = qkv(2, 2, n, 64, seed=text)
    lut = nb.block_lut(n, 32, 32)
    out, stats = block_sparse_attention(q, k, v, lut, neighborhood=nb, backend="torch", return_stats=True)
    ref = block_sparse_reference(q, k, v, neighborhood=nb)  # no LUT: the exact LUT must not change anything
    assert max_err(out, ref) < 1e-5
    if text:
        # global queries attend to everything: plain attention for those rows
        dense = F.scaled_dot_product_attention(q, k, v)
        assert max_err(out[:, :, nb.num_grid_tokens:], dense[:, :, nb.num_grid_tokens:]) < 1e-5
    assert stats["density"] <= 1.0
    out2 = block_sparse_attention(q, k, v, neighborhood=nb, backend="torch")  # LUT derived internally
    assert max_err(out2, ref) < 1e-5


def test_torch_neighborhood_and_lut_combined_and_empty_rows():
    nb = NeighborhoodMask((1, 10, 10), (1, 3, 3))
    q, k, v = qkv(1, 2, 100, 32, seed=9)
    # LUT listing only the last key block: most queries have no allowed key at all -> zeros, not NaN
    lut = BlockLUT.from_block_mask(torch.eye(4, dtype=torch.bool).flip(1)[None, None], 32, 32)
    out = block_sparse_attention(q, k, v, lut, neighborhood=nb, backend="torch")
    ref = block_sparse_reference(q, k, v, lut, neighborhood=nb)
    assert torch.isfinite(out).all()
    assert max_err(out, ref) < 1e-5
    assert (out.abs().sum(-1) == 0).any()


def test_dense_fast_path_and_full_lut():
    q, k, v = qkv(2, 2, 130, 40)
    dense = F.scaled_dot_product_attention(q, k, v)
    assert max_err(block_sparse_attention(q, k, v), dense) < 1e-5
    full = BlockLUT.full(130, 130, 64, 64)
    assert max_err(block_sparse_attention(q, k, v, full, backend="torch"), dense) < 1e-5
    assert max_err(block_sparse_attention(q, k, v, full, backend="reference"), dense) < 1e-5


# ------------------------------------------------------------------------------------------------ threshold
def test_threshold_same_semantics_as_reference_and_bound():
    q, k, v = peaked_inputs()
    lut = BlockLUT.full(128, 128, 16, 16)
    thr = 8.0
    out, stats = block_sparse_attention(q, k, v, lut, threshold=thr, backend="torch", return_stats=True)
    ref, ref_stats = block_sparse_reference(q, k, v, lut, threshold=thr, return_stats=True)
    assert stats["skipped_blocks"] == ref_stats["skipped_blocks"] > 0
    assert max_err(out, ref) < 1e-5
    exact = block_sparse_reference(q, k, v, lut)
    # bound: each skipped block adds < block_n * exp(-thr) to the softmax mass (max weight 1);
    # |out - exact| <= 2 * max|v| * (skipped blocks in the row) * block_n * exp(-thr)
    bound = 2 * v.abs().max() * lut.counts.max() * lut.block_n * math.exp(-thr)
    assert max_err(out, exact) <= bound
    assert max_err(out, exact) > 0  # skipping changed something: the test can fail


def test_threshold_bound_random_order_lut():
    q, k, v = peaked_inputs(seed=1)
    lut = random_lut(1, 2, 128, 128, 16, 16, density=0.8, seed=4, empty_row=False)
    for thr in (3.0, 6.0):
        out, stats = block_sparse_attention(q, k, v, lut, threshold=thr, backend="torch", return_stats=True)
        ref, ref_stats = block_sparse_reference(q, k, v, lut, threshold=thr, return_stats=True)
        assert stats["skipped_blocks"] == ref_stats["skipped_blocks"]
        assert max_err(out, ref) < 1e-5
        exact = block_sparse_reference(q, k, v, lut)
        assert max_err(out, exact) <= 2 * v.abs().max() * lut.counts.max() * 16 * math.exp(-thr)


def test_threshold_keep_mask_never_skips_the_first_block():
    s = torch.randn(1, 1, 16, 32)
    lut = BlockLUT.full(16, 32, 16, 16)
    keep, skipped = threshold_keep_mask(s, lut, 0.01)
    assert keep[..., :16].all()


# ------------------------------------------------------------------------------------------------ validation
def test_validation_errors(monkeypatch):
    q, k, v = qkv(1, 2, 64, 32)
    with pytest.raises(ValueError, match="4-D"):
        block_sparse_attention(q[0], k, v)
    with pytest.raises(ValueError, match="same shape"):
        block_sparse_attention(q, k, v[:, :, :10])
    with pytest.raises(ValueError, match="one dtype"):
        block_sparse_attention(q, k.half(), v.half())
    with pytest.raises(ValueError, match="agree in batch"):
        block_sparse_attention(q, k[:, :1], v[:, :1])
    with pytest.raises(ValueError, match="dtype torch.int64"):
        block_sparse_attention(q.long(), k.long(), v.long())
    with pytest.raises(ValueError, match="one device"):
        block_sparse_attention(q, k.to("meta"), v.to("meta"))
    with pytest.raises(ValueError, match="backend must be one of"):
        block_sparse_attention(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="threshold must be"):
        block_sparse_attention(q, k, v, threshold=-1.0)
    lut = BlockLUT.full(64, 64, 16, 16)
    with pytest.raises(ValueError, match="expected"):
        block_sparse_attention(q[:, :, :40], k, v, lut)
    with pytest.raises(ValueError, match="must lie in"):
        block_sparse_attention(q, k, v, BlockLUT(lut.indices + 2, lut.counts, 16, 16))
    with pytest.raises(ValueError, match="more than the sequence length"):
        block_sparse_attention(q, k, v, neighborhood=NeighborhoodMask((1, 9, 9), (1, 3, 3)))
    with pytest.raises(TypeError, match="BlockLUT"):
        block_sparse_attention(q, k, v, lut.to_block_mask(4))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            block_sparse_attention(q, k, v, backend="triton")


def test_auto_backend_logs_choice(caplog):
    q, k, v = qkv(1, 1, 32, 16)
    with caplog.at_level("DEBUG", logger="attnplug.kernels.block_sparse.dispatch"):
        _, stats = block_sparse_attention(q, k, v, BlockLUT.full(32, 32, 16, 16), return_stats=True)
    assert stats["backend"] == "torch"


# ------------------------------------------------------------------------------------------------ kv_keep
def _dense_masked_softmax(q, k, v, allowed, scale):
    """Explicit dense masked softmax in float64; rows with no allowed key are zero."""
    s = torch.matmul(q.double(), k.double().transpose(-1, -2)) * scale
    s = s.masked_fill(~allowed, -math.inf)
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.matmul(p, v.double())


def test_reference_kv_keep_is_a_dense_masked_softmax():
    q, k, v = qkv(2, 3, 45, 16, n_k=53, seed=11)
    lut = random_lut(2, 3, 45, 53, 16, 8, seed=5)
    keep = kv_keep_mask(2, 53, seed=1)
    keep[1] = False  # batch 1: no key at all -> zeros everywhere
    blocks = lut.to_block_mask(7)
    token = blocks[:, :, torch.arange(45) // 16][:, :, :, torch.arange(53) // 8]
    expect = _dense_masked_softmax(q, k, v, token & keep[:, None, None, :], 0.3)
    got = block_sparse_reference(q, k, v, lut, scale=0.3, kv_keep=keep)
    assert max_err(got, expect) < 1e-5
    assert torch.all(got[1] == 0)
    assert max_err(got, block_sparse_reference(q, k, v, lut, scale=0.3)) > 1e-2  # the mask changed the result


def test_reference_kv_keep_validation():
    q, k, v = qkv(2, 1, 8, 4)
    with pytest.raises(ValueError, match="kv_keep must be a bool tensor of shape"):
        block_sparse_reference(q, k, v, kv_keep=torch.ones(2, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="kv_keep must be a bool tensor of shape"):
        block_sparse_reference(q, k, v, kv_keep=torch.ones(2, 8))
    with pytest.raises(TypeError, match="kv_keep must be a bool torch.Tensor"):
        block_sparse_reference(q, k, v, kv_keep=[True] * 8)


@pytest.mark.parametrize("keep_batch", [1, 2])
@pytest.mark.parametrize("nb", [None, NEIGHBORHOODS[1]], ids=["lut", "neighborhood"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_kv_keep_matches_reference(nb, keep_batch, dtype):
    from attnplug.kernels.block_sparse.torch import block_sparse_torch

    n = 157 if nb is None else nb.num_grid_tokens + 13
    q, k, v = qkv(2, 2, n, 40, dtype=dtype, seed=n)
    lut = random_lut(2, 2, n, n, 32, 16, seed=3) if nb is None else nb.block_lut(n, 32, 16)
    keep = kv_keep_mask(keep_batch, n, seed=keep_batch)
    keep[..., n - 20:] = False  # padded tail, as key padding
    out, skipped = block_sparse_torch(q, k, v, lut, neighborhood=nb, scale=0.125, threshold=None, kv_keep=keep)
    ref = block_sparse_reference(q, k, v, lut, neighborhood=nb, scale=0.125, kv_keep=keep)
    assert out.dtype == dtype and skipped == 0
    assert max_err(out, ref) < TOL[dtype]
    assert max_err(ref, block_sparse_reference(q, k, v, lut, neighborhood=nb, scale=0.125)) > 1e-2


def test_torch_kv_keep_with_threshold_and_long_rows(monkeypatch):
    from attnplug.kernels.block_sparse import torch as bs_torch

    monkeypatch.setattr(bs_torch, "CHUNK_ABOVE_KEYS", 32)  # the unmasked chunked path must not ignore kv_keep
    q, k, v = peaked_inputs(seed=2)
    lut = BlockLUT.full(128, 128, 16, 16)
    keep = kv_keep_mask(1, 128, seed=4)
    keep[:, :16] = False  # the highest-scoring block is padding
    for thr in (None, 4.0):
        out, skipped = bs_torch.block_sparse_torch(q, k, v, lut, neighborhood=None, scale=0.2, threshold=thr,
                                                   kv_keep=keep)
        ref, stats = block_sparse_reference(q, k, v, lut, scale=0.2, threshold=thr, kv_keep=keep, return_stats=True)
        assert max_err(out, ref) < 1e-5
        assert skipped == stats["skipped_blocks"]
