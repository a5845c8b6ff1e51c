"""The ``flex`` and ``natten`` neighbourhood backends vs the fp32 reference (strides, dilations, causal dimensions,
text tokens first/last, grid-only queries, batch 2, fp32/bf16, head dims 40 and 64).

Flex runs uncompiled here (its compiled path is tested in ``test_block_sparse_flex.py``); NATTEN runs its own
backend for the device (on a CPU: its Flex backend, uncompiled).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from attnplug.kernels import neighborhood_attention
from attnplug.kernels.block_sparse import flex as bs_flex
from attnplug.kernels.neighborhood import natten as na_backend
from attnplug.kernels.neighborhood import neighborhood_dispatch, normalize_params, resolve_neighborhood
from attnplug.layout import TokenLayout

NATTEN_MISSING = na_backend.natten_unavailable_reason()
needs_natten = pytest.mark.skipif(NATTEN_MISSING is not None, reason=f"natten does not import: {NATTEN_MISSING}")

CASES = [
    # (frames, height, width), kernel, stride, dilation, causal  (NATTEN order, layout-op int rule)
    ((1, 1, 13), (1, 1, 5), 1, 1, False),  # 1-D odd length
    ((1, 1, 12), (1, 1, 3), 1, 2, False),  # 1-D even length, dilation
    ((7, 1, 1), (3, 1, 1), 1, 1, (True, False, False)),  # 1-D causal over frames
    ((1, 7, 9), (3, 5), 1, 1, False),  # 2-D non-square
    ((1, 8, 8), 5, 2, 1, False),  # 2-D strided
    ((1, 9, 9), 3, 3, 1, False),  # blocked (stride = kernel)
    ((1, 8, 11), 5, (3, 4), 1, False),  # strides not dividing the grid
    ((4, 5, 5), (2, 3, 3), (1, 2, 1), 1, (True, False, False)),  # causal frames, strided rows
    ((3, 6, 7), (3, 3, 5), (1, 1, 2), (1, 2, 1), False),  # 3-D dilation + stride
    ((3, 5, 6), (1, 3, 3), 1, 1, False),  # frame-local windows (kernel 1: folded into the batch by natten)
    ((3, 5, 7), (3, 1, 5), 1, 1, False),  # row-local windows (a middle dimension folded)
    ((2, 5, 6), 3, 1, 1, False),  # int kernel: frames unrestricted (a whole-dimension kernel)
]
IDS = [f"{c[0]}-k{c[1]}-s{c[2]}-d{c[3]}-c{c[4]}" for c in CASES]
BACKENDS = ["flex", pytest.param("natten", marks=needs_natten)]


@pytest.fixture(autouse=True)
def _eager_flex(monkeypatch):
    monkeypatch.setattr(bs_flex, "EAGER", True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        yield


def _inputs(layout, batch=2, heads=2, dim=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, layout.num_tokens, dim, generator=g).to(dtype) for _ in range(3)]


def _tol(dtype):
    return dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("text", [0, 3, -4], ids=["no-text", "text-last", "text-first"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(backend, case, text):
    grid, kernel, stride, dilation, causal = case
    layout = TokenLayout(*grid, text_tokens=abs(text), text_first=text < 0)
    q, k, v = _inputs(layout, seed=len(IDS) + text)
    args = (kernel, stride, dilation, causal)
    out = neighborhood_attention(q, k, v, *args, layout=layout, backend=backend, block_size=16)
    ref = neighborhood_attention(q, k, v, *args, layout=layout, backend="reference")
    torch.testing.assert_close(out, ref, **_tol(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [64, 40])
@pytest.mark.parametrize("backend", BACKENDS)
def test_dtypes_and_head_dims(backend, dim, dtype):
    layout = TokenLayout(3, 6, 7, text_tokens=5)
    q, k, v = _inputs(layout, dim=dim, dtype=dtype, seed=dim)
    args = ((3, 3, 5), (1, 1, 2), (1, 2, 1), False)
    out = neighborhood_attention(q, k, v, *args, layout=layout, backend=backend, block_size=64)
    ref = neighborhood_attention(q, k, v, *args, layout=layout, backend="reference")
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), ref.float(), **_tol(dtype))


@pytest.mark.parametrize("block_size", [16, 36])
@pytest.mark.parametrize("backend", BACKENDS)
def test_grid_only_queries_with_text_keys(backend, block_size):
    """Queries are the grid tokens only; the layout's text tokens are extra global keys."""
    layout = TokenLayout(1, 7, 9, text_tokens=6, text_first=True)
    q, k, v = _inputs(layout, seed=block_size)
    params = normalize_params((3, 5), 1, 1, False, owner="test")
    res = resolve_neighborhood(layout.grid, *params, clamp=False)
    q_grid = layout.to_text_last(q)[:, :, : layout.image_tokens]
    out = neighborhood_dispatch(q_grid, k, v, layout, res, backend=backend, block_size=block_size)
    ref = neighborhood_dispatch(q_grid, k, v, layout, res, backend="reference")
    assert out.shape == q_grid.shape
    torch.testing.assert_close(out, ref, **_tol(torch.float32))


@needs_natten
def test_natten_refuses_per_token_windows():
    layout = TokenLayout(2, 3, 4)
    q, k, v = _inputs(layout)
    res = resolve_neighborhood(layout.grid, *normalize_params((1, 1, 1), owner="test"), clamp=False)
    with pytest.raises(ValueError, match="needs a kernel of at least 2"):
        na_backend.natten_attention(q, k, v, layout, res)


def test_natten_missing_is_a_clear_error(monkeypatch):
    from attnplug import _optional

    monkeypatch.setitem(_optional._TRIED, "natten", "ModuleNotFoundError: No module named 'natten'")
    layout = TokenLayout(1, 5, 5)
    q, k, v = _inputs(layout)
    with pytest.raises(ValueError, match="backend='natten' needs the natten package.*No module named"):
        neighborhood_attention(q, k, v, 3, layout=layout, backend="natten")


def test_config_accepts_the_new_backends():
    from attnplug import NeighborhoodConfig

    assert NeighborhoodConfig(kernel_size=3, backend="flex").backend == "flex"
    assert NeighborhoodConfig(kernel_size=3, backend="natten").backend == "natten"
