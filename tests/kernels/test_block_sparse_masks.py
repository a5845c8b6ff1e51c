"""BlockLUT and NeighborhoodMask: brute-force enumeration of the NATTEN/GNA rule, exact LUTs, validation."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_testutil import brute_force_mask

from attnplug.kernels import BlockLUT, NeighborhoodMask

CASES = [
    NeighborhoodMask((1, 6, 7), (1, 3, 5)),
    NeighborhoodMask((2, 5, 6), (1, 3, 3), dilation=(1, 1, 2)),
    NeighborhoodMask((3, 4, 9), (3, 3, 3), stride=(1, 2, 3)),
    NeighborhoodMask((4, 3, 8), (2, 3, 4), is_causal=(True, False, True), stride=(2, 1, 2)),
    NeighborhoodMask((2, 6, 6), (1, 3, 3), dilation=(2, 2, 2), stride=(1, 3, 1)),
    NeighborhoodMask((1, 8, 8), (1, 8 - 1, 1), dilation=(1, 1, 8), is_causal=(False, False, False)),
]


@pytest.mark.parametrize("nb", CASES, ids=lambda nb: f"{nb.grid}-{nb.kernel_size}-{nb.dilation}-{nb.stride}")
def test_allowed_matches_brute_force(nb):
    n = nb.num_grid_tokens + 5  # 5 global tokens at the end
    idx = torch.arange(n)
    got = nb.allowed(idx[:, None], idx[None, :])
    assert torch.equal(got, brute_force_mask(nb, n, n))


def test_every_noncausal_query_sees_exactly_kernel_positions():
    nb = NeighborhoodMask((3, 7, 9), (3, 5, 7), dilation=(1, 1, 1), stride=(1, 2, 3))
    idx = torch.arange(nb.num_grid_tokens)
    counts = nb.allowed(idx[:, None], idx[None, :]).sum(-1)
    assert torch.all(counts == 3 * 5 * 7)


def _block_mask_brute(nb, n, n_k, bm, bn):
    token = brute_force_mask(nb, n, n_k)
    mq, mk = math.ceil(n / bm), math.ceil(n_k / bn)
    padded = torch.zeros(mq * bm, mk * bn, dtype=torch.bool)
    padded[:n, :n_k] = token
    return padded.view(mq, bm, mk, bn).any(3).any(1)


@pytest.mark.parametrize("nb", CASES, ids=lambda nb: f"{nb.grid}-{nb.kernel_size}-{nb.dilation}-{nb.stride}")
@pytest.mark.parametrize("blocks", [(16, 16), (32, 8), (8, 32)])
def test_block_lut_is_exact(nb, blocks):
    bm, bn = blocks
    n = nb.num_grid_tokens + 7
    lut = nb.block_lut(n, bm, bn)
    expect = _block_mask_brute(nb, n, n, bm, bn)
    assert torch.equal(lut.to_block_mask(expect.shape[1])[0, 0], expect)
    assert lut.indices.dtype == torch.int32 and lut.counts.dtype == torch.int32


def test_block_lut_dilation_larger_than_block():
    nb = NeighborhoodMask((1, 2, 40), (1, 1, 3), dilation=(1, 1, 13))
    lut = nb.block_lut(80, 4, 4)
    assert torch.equal(lut.to_block_mask(20)[0, 0], _block_mask_brute(nb, 80, 80, 4, 4))


def test_block_lut_global_rows_and_columns():
    nb = NeighborhoodMask((1, 8, 8), (1, 3, 3))
    n = 64 + 20  # 20 text tokens
    mask = nb.block_lut(n, 16, 16).to_block_mask(6)[0, 0]
    assert mask[:, 4:].all()  # key blocks 4 (tokens 64..79) and 5 hold global tokens
    assert mask[4:].all()  # query blocks with global queries see everything
    assert not mask[0, 3]  # a far grid block is skipped


# ------------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(grid=(1, 8, 8), kernel_size=(1, 0, 3)), r"kernel_size\[1\] \(height\) must be >= 1"),
        (dict(grid=(1, 8, 8), kernel_size=(1, 3, 3), dilation=(1, 0, 1)), r"dilation\[1\]"),
        (dict(grid=(1, 8, 8), kernel_size=(1, 3, 3), stride=(1, 1, 0)), r"stride\[2\] \(width\) must be >= 1"),
        (dict(grid=(1, 8, 8), kernel_size=(1, 5, 3), dilation=(1, 2, 1)), r"exceeds the grid length 8"),
        (dict(grid=(1, 8, 8), kernel_size=(1, 3, 3), stride=(1, 4, 1)), r"stride\[1\] \(height\) = 4 must be <="),
        (dict(grid=(1, 8, 8), kernel_size=(1, 4, 3)), r"must be odd"),
        (dict(grid=(1, 8), kernel_size=(1, 3, 3)), r"grid must be"),
    ],
)
def test_neighborhood_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NeighborhoodMask(**kwargs)


def test_neighborhood_even_causal_kernel_is_fine_and_grid_checked_against_n():
    nb = NeighborhoodMask((1, 8, 8), (1, 4, 3), is_causal=(False, True, False))
    with pytest.raises(ValueError, match="more than the sequence length"):
        nb.block_lut(60, 16, 16)


# ------------------------------------------------------------------------------------------------ BlockLUT
def test_lut_round_trip_and_density():
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(2, 3, 5, 4, generator=g) < 0.5
    lut = BlockLUT.from_block_mask(mask, 16, 32)
    assert torch.equal(lut.to_block_mask(4), mask)
    assert torch.equal(lut.counts, mask.sum(-1).to(torch.int32))
    n_q, n_k = 70, 100  # partial last blocks: 6 and 4 tokens
    sizes_q = torch.tensor([16, 16, 16, 16, 6.0])
    sizes_k = torch.tensor([32, 32, 32, 4.0])
    expect = (mask.double() * sizes_q[:, None] * sizes_k[None, :]).sum((-1, -2)).mean() / (n_q * n_k)
    assert math.isclose(lut.density(n_q, n_k), float(expect), rel_tol=1e-12)


def test_lut_full():
    lut = BlockLUT.full(130, 70, 64, 32)
    assert lut.indices.shape == (1, 1, 3, 3) and lut.counts.tolist() == [[[3, 3, 3]]]
    assert lut.density(130, 70) == 1.0


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: BlockLUT(torch.zeros(1, 1, 2, dtype=torch.int32), torch.zeros(1, 1, 2, dtype=torch.int32), 16, 16),
         "4-D"),
        (lambda: BlockLUT(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, dtype=torch.int32), 16, 16), "int32"),
        (lambda: BlockLUT(torch.zeros(1, 1, 2, 2, dtype=torch.int32), torch.zeros(1, 1, 3, dtype=torch.int32), 16,
                          16), "does not match"),
        (lambda: BlockLUT(torch.zeros(1, 1, 2, 2, dtype=torch.int32), torch.zeros(1, 1, 2, dtype=torch.int32), 0,
                          16), "block_m"),
    ],
)
def test_lut_construction_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_lut_validate_errors():
    lut = BlockLUT.full(64, 64, 16, 16)
    lut.validate(2, 3, 64, 64)
    with pytest.raises(ValueError, match="expected"):
        lut.validate(2, 3, 80, 64)  # 5 query blocks needed
    bad = BlockLUT(lut.indices + 1, lut.counts, 16, 16)
    with pytest.raises(ValueError, match=r"lut.indices must lie in \[0, 4\)"):
        bad.validate(1, 1, 64, 64)
    dup = BlockLUT(torch.zeros_like(lut.indices), lut.counts, 16, 16)
    with pytest.raises(ValueError, match="twice"):
        dup.validate(1, 1, 64, 64)
    over = BlockLUT(lut.indices, lut.counts + 1, 16, 16)
    with pytest.raises(ValueError, match="counts must lie"):
        over.validate(1, 1, 64, 64)
    per_head = BlockLUT(lut.indices.expand(1, 2, -1, -1).contiguous(), lut.counts.expand(1, 2, -1).contiguous(), 16,
                        16)
    with pytest.raises(ValueError, match="counts shape"):
        per_head.validate(1, 3, 64, 64)
