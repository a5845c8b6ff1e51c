"""FlexAttention backend of block-sparse attention vs the dense fp32 reference.

Fast tests run flex uncompiled (``EAGER``: the mask_mod carries the LUT too); the compiled path, which skips the blocks
not listed, compiles for 30-60 s per shape on a CPU and is in the slow tests.
"""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from kernel_testutil import TOL, kv_keep_mask, max_err, qkv, random_lut

from attnplug.kernels import BlockLUT, NeighborhoodMask, block_sparse_reference
from attnplug.kernels.block_sparse import flex as bs_flex
from attnplug.kernels.block_sparse.flex import block_sparse_flex, kernel_tiles

NEIGHBORHOODS = [
    NeighborhoodMask((1, 12, 14), (1, 5, 7)),
    NeighborhoodMask((3, 6, 8), (3, 3, 5), dilation=(1, 2, 1), stride=(1, 1, 2)),
    NeighborhoodMask((4, 5, 6), (2, 3, 3), is_causal=(True, False, False), stride=(2, 1, 3)),
]
NB_IDS = ["2d", "3d-dil-stride", "causal"]


@pytest.fixture(autouse=True)
def _eager(monkeypatch):
    monkeypatch.setattr(bs_flex, "EAGER", True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        yield


def _check(q, k, v, lut, nb=None, keep=None, scale=0.2):
    out = block_sparse_flex(q, k, v, lut, neighborhood=nb, scale=scale, kv_keep=keep)
    ref = block_sparse_reference(q, k, v, lut, neighborhood=nb, scale=scale, kv_keep=keep)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert max_err(out, ref) < TOL[q.dtype] * (2 if q.dtype == torch.bfloat16 else 1)
    return out, ref


# ------------------------------------------------------------------------------------------------ random LUTs
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [64, 40, 8])
@pytest.mark.parametrize("blocks", [(32, 16), (36, 18)], ids=["direct", "reblocked"])
def test_random_lut_per_head_rows(blocks, dim, dtype):
    n = 131
    q, k, v = qkv(2, 3, n, dim, dtype=dtype, seed=dim)
    lut = random_lut(2, 3, n, n, *blocks, seed=dim)  # row 0 empty, row 1 full, entries in random order
    out, _ = _check(q, k, v, lut)
    assert torch.all(out[:, :, : blocks[0]] == 0)


@pytest.mark.parametrize("lb, lh", [(1, 1), (1, 3), (2, 1)])
def test_broadcast_lut_and_cross_lengths(lb, lh):
    q, k, v = qkv(2, 3, 90, 64, n_k=77, seed=lb + lh)
    _check(q, k, v, random_lut(lb, lh, 90, 77, 32, 16, seed=7))


# ------------------------------------------------------------------------------------------------ neighbourhoods
@pytest.mark.parametrize("nb", NEIGHBORHOODS, ids=NB_IDS)
@pytest.mark.parametrize("text", [0, 13])
@pytest.mark.parametrize("block", [32, 36])
def test_neighborhood_with_text_tokens(nb, text, block):
    n = nb.num_grid_tokens + text
    q, k, v = qkv(2, 2, n, 64, seed=text + block)
    out, ref = _check(q, k, v, nb.block_lut(n, block, block), nb=nb)
    assert max_err(ref, block_sparse_reference(q, k, v, neighborhood=nb, scale=0.2)) < 1e-5  # exact LUT


def test_neighborhood_bf16_head_dim_40():
    nb = NEIGHBORHOODS[1]
    n = nb.num_grid_tokens + 5
    q, k, v = qkv(2, 2, n, 40, dtype=torch.bfloat16, seed=3)
    _check(q, k, v, nb.block_lut(n, 64, 64), nb=nb)


# ------------------------------------------------------------------------------------------------ kv_keep
@pytest.mark.parametrize("keep_batch", [1, 2])
@pytest.mark.parametrize("blocks", [(32, 16), (36, 18)], ids=["direct", "reblocked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_keep_sparse_video_style(keep_batch, blocks, dtype):
    n = 149
    q, k, v = qkv(2, 4, n, 64, dtype=dtype, seed=keep_batch)
    lut = random_lut(1, 4, n, n, *blocks, density=0.6, seed=keep_batch)
    keep = kv_keep_mask(keep_batch, n, seed=keep_batch)
    keep[..., n - 30:] = False  # padded slots at the end
    _, ref = _check(q, k, v, lut, keep=keep)
    assert max_err(ref, block_sparse_reference(q, k, v, lut, scale=0.2)) > 1e-2  # kv_keep matters here


def test_kv_keep_with_neighborhood_and_empty_rows():
    nb = NEIGHBORHOODS[2]
    n = nb.num_grid_tokens + 7
    q, k, v = qkv(2, 2, n, 32, seed=5)
    keep = kv_keep_mask(2, n, seed=9)
    keep[1] = False  # batch 1 has no key at all: zeros, not NaN
    out, _ = _check(q, k, v, nb.block_lut(n, 32, 32), nb=nb, keep=keep)
    assert torch.all(out[1] == 0) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------ plumbing
def test_reblocked_mask_cached_per_live_lut():
    bs_flex.clear_cache()
    q, k, v = qkv(1, 2, 100, 16)
    lut = random_lut(1, 2, 100, 100, 36, 18, seed=1)
    calls = []
    original = bs_flex._coarse_structure

    def counting(*args):
        calls.append(1)
        return original(*args)

    try:
        bs_flex._coarse_structure = counting
        a = block_sparse_flex(q, k, v, lut, neighborhood=None, scale=0.25)
        b = block_sparse_flex(q, k, v, lut, neighborhood=None, scale=0.25)
    finally:
        bs_flex._coarse_structure = original
    assert len(calls) == 1 and torch.equal(a, b)
    assert len(bs_flex._CACHE) == 1
    del lut
    gc.collect()
    assert len(bs_flex._CACHE) == 0  # a dead LUT leaves the cache


def test_refusals():
    q, k, v = qkv(2, 1, 32, 16)
    lut = BlockLUT.full(32, 32, 16, 16)
    with pytest.raises(ValueError, match="inference-only"):
        block_sparse_flex(q.requires_grad_(), k, v, lut, neighborhood=None, scale=0.25)
    with pytest.raises(ValueError, match=r"kv_keep must be a bool tensor of shape \(1 or 2, 32\)"):
        block_sparse_flex(q.detach(), k, v, lut, neighborhood=None, scale=0.25, kv_keep=torch.ones(3, 32) > 0)


def test_kernel_tiles_divide_the_sparse_block():
    assert kernel_tiles(128, 64, 64, torch.bfloat16) == (128, 64)
    assert kernel_tiles(64, 64, 128, torch.bfloat16) == (64, 64)
    assert kernel_tiles(128, 128, 64, torch.float32) == (64, 64)
    assert kernel_tiles(48, 80, 40, torch.float16) == (16, 16)
    assert kernel_tiles(128, 64, 256, torch.bfloat16) == (64, 32)


# ------------------------------------------------------------------------------------------------ compiled (slow)
@pytest.mark.slow
def test_compiled_default_path_and_no_recompile(monkeypatch):
    """The default (compiled) path skips unlisted blocks: the LUT is not in its mask_mod. A fresh kv_keep and a new
    LUT of the same shapes reuse the compiled graph."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(bs_flex, "EAGER", False)
    nb = NEIGHBORHOODS[1]
    n = nb.num_grid_tokens + 13
    q, k, v = qkv(2, 2, n, 40, seed=4)
    counters.clear()
    for seed in range(2):
        lut = random_lut(2, 2, n, n, 32, 16, seed=seed, density=0.8)
        keep = kv_keep_mask(2, n, seed=seed)
        _check(q, k, v, lut, nb=nb, keep=keep, scale=0.3)
    assert counters["stats"]["unique_graphs"] <= 1
    assert not counters["recompiles"]


@pytest.mark.slow
def test_inside_caller_compile_fullgraph():
    q, k, v = qkv(1, 2, 70, 32, seed=8)
    lut = random_lut(1, 2, 70, 70, 36, 18, seed=8)  # re-blocked: the coarse mask is built inside the graph
    keep = kv_keep_mask(1, 70, seed=8)

    def f(q, k, v, keep):
        return block_sparse_flex(q, k, v, lut, neighborhood=None, scale=0.2, kv_keep=keep)

    out = torch.compile(f, fullgraph=True)(q, k, v, keep)
    assert max_err(out, block_sparse_reference(q, k, v, lut, scale=0.2, kv_keep=keep)) < 1e-5
