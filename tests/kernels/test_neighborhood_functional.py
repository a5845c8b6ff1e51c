"""Neighbourhood attention fast paths (tiles, block-sparse torch/Triton) vs the fp32 reference, the NATTEN-shaped
ops' argument order, strict validation, and the reference itself against the definition."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from attnplug.kernels import na1d, na2d, na3d, neighborhood_attention, neighborhood_attention_generic
from attnplug.kernels.neighborhood import (
    BACKENDS,
    neighborhood_reference,
    normalize_params,
    resolve_neighborhood,
    tiles_attention,
)
from attnplug.kernels.neighborhood.reference import window_1d
from attnplug.layout import TokenLayout

ATOL, RTOL = 2e-5, 1e-4


def reference(q, k, v, layout, kernel, stride=1, dilation=1, causal=False):
    """The fp32 reference with the layout op's argument rule (strict)."""
    params = normalize_params(kernel, stride, dilation, causal, owner="test")
    res = resolve_neighborhood(layout.grid, *params, clamp=False)
    return neighborhood_reference(q, k, v, layout, res.kernel_size, res.stride, res.dilation, res.is_causal)


# ------------------------------------------------------------------------------------------ the reference itself
@pytest.mark.parametrize("args, expected", [
    ((0, 7, 3, 1, 1, False), {0, 1, 2}),  # clamped inward at the start
    ((3, 7, 3, 1, 1, False), {2, 3, 4}),
    ((6, 7, 3, 1, 1, False), {4, 5, 6}),  # clamped inward at the end
    ((3, 7, 3, 1, 1, True), {1, 2, 3}),  # causal: ends at the query
    ((0, 7, 3, 1, 1, True), {0}),
    ((4, 12, 3, 2, 1, False), {2, 4, 6}),  # dilation 2: residue class of 4
    ((5, 12, 3, 2, 1, False), {3, 5, 7}),
    ((0, 9, 3, 1, 3, False), {0, 1, 2}),  # blocked (stride = kernel): the group 0-2 shares one window
    ((2, 9, 3, 1, 3, False), {0, 1, 2}),
    ((3, 9, 3, 1, 3, False), {3, 4, 5}),
    ((1, 8, 5, 1, 2, False), {0, 1, 2, 3, 4}),  # stride 2: leader of {0, 1} is 1 (right-hand centre)
    ((4, 8, 5, 1, 2, False), {3, 4, 5, 6, 7}),  # leader of {4, 5} is 5, window 3-7
])
def test_reference_window_is_the_definition(args, expected):
    assert window_1d(*args) == expected


# ------------------------------------------------------------------------------------------ layout op vs reference
CASES = [
    # (frames, height, width), kernel, stride, dilation, causal  (NATTEN order)
    ((1, 1, 13), (1, 1, 5), 1, 1, False),  # 1-D odd length
    ((1, 1, 12), (1, 1, 3), 1, 2, False),  # 1-D even length, dilation
    ((7, 1, 1), (3, 1, 1), 1, 1, (True, False, False)),  # 1-D causal over frames
    ((1, 7, 9), (3, 5), 1, 1, False),  # 2-D non-square, odd
    ((1, 8, 8), 5, 2, 1, False),  # 2-D even, strided
    ((1, 9, 9), 3, 3, 1, False),  # 2-D blocked (stride = kernel)
    ((1, 10, 6), (5, 3), 1, (2, 1), False),  # 2-D dilation on one axis
    ((1, 8, 11), 5, (3, 4), 1, False),  # strides not dividing the grid
    ((4, 5, 6), (3, 3, 3), 1, 1, False),  # 3-D, even frames
    ((4, 5, 5), (2, 3, 3), (1, 2, 1), 1, (True, False, False)),  # causal frames, strided rows
    ((3, 6, 7), (3, 3, 5), (1, 1, 2), (1, 2, 1), False),  # 3-D dilation + stride
]
IDS = [f"{c[0]}-k{c[1]}-s{c[2]}-d{c[3]}-c{c[4]}" for c in CASES]


@pytest.mark.parametrize("text", [0, 3, -4], ids=["no-text", "text-last", "text-first"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("backend", ["tiles", "torch"])
def test_layout_op_matches_reference(case, text, backend):
    grid, kernel, stride, dilation, causal = case
    layout = TokenLayout(*grid, text_tokens=abs(text), text_first=text < 0)
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, layout.num_tokens, 16).unbind(0)
    out = neighborhood_attention(q, k, v, kernel, stride, dilation, causal, layout=layout, backend=backend,
                                 block_size=8)
    torch.testing.assert_close(out, reference(q, k, v, layout, kernel, stride, dilation, causal), atol=ATOL,
                               rtol=RTOL)


def test_layout_op_reference_backend_is_the_reference():
    layout = TokenLayout(1, 7, 9, text_tokens=2)
    q, k, v = torch.randn(3, 1, 2, layout.num_tokens, 8).unbind(0)
    out = neighborhood_attention(q, k, v, 3, layout=layout, backend="reference")
    torch.testing.assert_close(out, reference(q, k, v, layout, 3), atol=0, rtol=0)


def test_int_is_height_and_width_frames_unrestricted():
    """The package rule: an int (or a 2-tuple) is (height, width); frames stay unrestricted."""
    layout = TokenLayout(3, 5, 5)
    params = normalize_params(3, owner="t")
    assert params[0] == (None, 3, 3) and params[1] == (1, 1, 1) and params[3] == (False, False, False)
    assert normalize_params((3, 3), owner="t")[0] == (None, 3, 3)
    res = resolve_neighborhood(layout.grid, *normalize_params((3, 3), owner="t"))
    assert res.kernel_size == (3, 3, 3) and res.full == (True, False, False)
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 1, 2, layout.num_tokens, 8).unbind(0)
    out = neighborhood_attention(q, k, v, 3, layout=layout, backend="tiles")
    ref = neighborhood_reference(q, k, v, layout, (None, 3, 3), (1,) * 3, (1,) * 3, (False,) * 3)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


def test_layout_is_keyword_only():
    layout = TokenLayout(1, 5, 5)
    q = torch.randn(1, 1, 25, 8)
    with pytest.raises(TypeError, match="fourth argument is kernel_size"):
        neighborhood_attention(q, q, q, layout, 3)


@pytest.mark.parametrize("grid, kwargs, match", [
    ((1, 5, 9), dict(kernel_size=7), "kernel_size for height is 7, larger than the grid's height length 5.*<= 5"),
    ((1, 9, 6), dict(kernel_size=(3, 7)), "kernel_size for width is 7.*width length 6.*<= 6"),
    ((1, 9, 9), dict(kernel_size=3, dilation=(1, 4)),
     r"kernel_size \* dilation for width is 3 \* 4 = 12.*width length 9.*<= 9 \(dilation <= 3\)"),
    ((1, 9, 9), dict(kernel_size=(3, 4)), "kernel_size for width is 4.*odd"),
    ((1, 9, 9), dict(kernel_size=3, stride=5), "stride for height is 5.*<= 3"),
    ((1, 9, 9), dict(kernel_size=3, backend="cuda"), "backend must be one of"),
])
def test_layout_op_strict_errors(grid, kwargs, match):
    layout = TokenLayout(*grid)
    q = torch.randn(1, 1, layout.num_tokens, 8)
    with pytest.raises(ValueError, match=match):
        neighborhood_attention(q, q, q, layout=layout, **kwargs)


def test_layout_op_checks_token_count():
    q = torch.randn(1, 1, 20, 8)
    with pytest.raises(ValueError, match="describes 25 tokens"):
        neighborhood_attention(q, q, q, 3, layout=TokenLayout(1, 5, 5))


def test_backends_vocabulary():
    assert BACKENDS == ("auto", "triton", "torch", "flex", "natten", "tiles", "reference")


# ------------------------------------------------------------------------------------------ NATTEN-shaped ops
def _natten_qkv(b, spatial, heads, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, *spatial, heads, dim, generator=g) for _ in range(3)]


def _natten_reference(q, k, v, kernel, stride, dilation, causal, extra=None):
    """Reference on NATTEN-shaped tensors; per-dimension triples (frames, height, width) given explicitly."""
    b, *spatial, h, d = q.shape
    grid = (1,) * (3 - len(spatial)) + tuple(spatial)
    n_extra = 0 if extra is None else extra[0].shape[1]
    layout = TokenLayout(*grid, text_tokens=n_extra, text_first=False)
    flat = [x.reshape(b, -1, h, d) for x in (q, k, v)]
    if extra is not None:
        flat[1] = torch.cat([flat[1], extra[0]], 1)
        flat[2] = torch.cat([flat[2], extra[1]], 1)
    qq, kk, vv = (x.transpose(1, 2) for x in flat)
    out = neighborhood_reference(qq, kk, vv, layout, kernel, stride, dilation, causal)
    return out.transpose(1, 2).reshape(q.shape)


@pytest.mark.parametrize("backend", ["tiles", "torch", "reference"])
def test_na2d_argument_order_stride_then_dilation(backend):
    """NATTEN's order (kernel_size, stride, dilation): stride 2 / dilation 1 and stride 1 / dilation 2 differ, and
    each matches the reference with the parameters in that order."""
    q, k, v = _natten_qkv(2, (9, 10), 2, 16)
    as_stride = na2d(q, k, v, 3, 2, 1, backend=backend, block_size=16)
    as_dilation = na2d(q, k, v, 3, 1, 2, backend=backend, block_size=16)
    assert (as_stride - as_dilation).abs().max() > 1e-2  # distinguishable
    ref_s = _natten_reference(q, k, v, (None, 3, 3), (1, 2, 2), (1, 1, 1), (False,) * 3)
    ref_d = _natten_reference(q, k, v, (None, 3, 3), (1, 1, 1), (1, 2, 2), (False,) * 3)
    torch.testing.assert_close(as_stride, ref_s, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(as_dilation, ref_d, atol=ATOL, rtol=RTOL)
    kw = na2d(q, k, v, kernel_size=3, dilation=2, backend=backend, block_size=16)
    torch.testing.assert_close(kw, as_dilation, atol=0, rtol=0)


@pytest.mark.parametrize("backend", ["tiles", "torch"])
def test_na1d_and_na3d_argument_order(backend):
    q, k, v = _natten_qkv(1, (14,), 2, 8, seed=1)
    out = na1d(q, k, v, 5, 2, 2, True, backend=backend, block_size=8)  # kernel, stride, dilation, causal
    ref = _natten_reference(q, k, v, (None, None, 5), (1, 1, 2), (1, 1, 2), (False, False, True))
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    q, k, v = _natten_qkv(1, (4, 6, 7), 2, 8, seed=2)
    out = na3d(q, k, v, (3, 3, 5), (1, 3, 2), (1, 2, 1), (True, False, False), backend=backend, block_size=8)
    ref = _natten_reference(q, k, v, (3, 3, 5), (1, 3, 2), (1, 2, 1), (True, False, False))
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    # an int is every dimension of the op (NATTEN's rule): na3d(kernel_size=3) restricts frames too
    torch.testing.assert_close(na3d(q, k, v, 3, backend=backend, block_size=8),
                               _natten_reference(q, k, v, (3, 3, 3), (1,) * 3, (1,) * 3, (False,) * 3),
                               atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("backend", ["tiles", "torch"])
def test_additional_keys_are_global(backend):
    q, k, v = _natten_qkv(2, (7, 8), 2, 16, seed=3)
    ek, ev = torch.randn(2, 2, 5, 2, 16).unbind(0)
    out = na2d(q, k, v, (3, 5), additional_keys=ek, additional_values=ev, backend=backend, block_size=16)
    ref = _natten_reference(q, k, v, (None, 3, 5), (1,) * 3, (1,) * 3, (False,) * 3, extra=(ek, ev))
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


def test_natten_shaped_errors():
    q = torch.randn(1, 9, 9, 2, 8)
    with pytest.raises(ValueError, match="na1d: query must be 4-D"):
        na1d(q, q, q, 3)
    with pytest.raises(ValueError, match="na2d.kernel_size must be"):
        na2d(q, q, q, (3, 3, 3))
    with pytest.raises(ValueError, match="kernel_size for width is 11, larger"):
        na2d(q, q, q, (3, 11))
    with pytest.raises(ValueError, match="both or neither"):
        na2d(q, q, q, 3, additional_keys=torch.randn(1, 2, 2, 8))
    with pytest.raises(ValueError, match="one shape"):
        neighborhood_attention_generic(q, q[:, :8], q, 3)


# ------------------------------------------------------------------------------------------ tiles path details
@pytest.mark.parametrize("tile", [(1, 2, 3), (2, 4, 1), (3, 5, 5)])
@pytest.mark.parametrize("case", [CASES[3], CASES[7], CASES[9], CASES[10]], ids=lambda c: f"{c[0]}")
def test_tiles_path_any_tile_size(case, tile):
    """The tiles path is exact for any tile shape (partial, padded tiles; text first)."""
    grid, kernel, stride, dilation, causal = case
    layout = TokenLayout(*grid, text_tokens=2, text_first=True)
    res = resolve_neighborhood(grid, *normalize_params(kernel, stride, dilation, causal, owner="t"), clamp=False)
    torch.manual_seed(5)
    q, k, v = torch.randn(3, 2, 2, layout.num_tokens, 8).unbind(0)
    out = tiles_attention(q, k, v, layout, res, None, tile=tuple(min(t, n) for t, n in zip(tile, grid)))
    ref = neighborhood_reference(q, k, v, layout, res.kernel_size, res.stride, res.dilation, res.is_causal)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("max_elements", [1, 4096, 1 << 23], ids=["one-tile-per-chunk", "few-tiles", "one-chunk"])
def test_tiles_path_chunks_and_token_major_views(max_elements):
    """Chunked gathers into the reused buffers, with (B, H, N, D) views of (B, N, H, D) tensors (diffusers' layout),
    stay exact; a second call with other shapes reuses (and grows) the buffers."""
    for grid, kernel, text in (((1, 9, 10), (1, 5, 3), 3), ((2, 6, 7), (1, 3, 5), 0)):
        layout = TokenLayout(*grid, text_tokens=text)
        res = resolve_neighborhood(grid, *normalize_params(kernel, owner="t"), clamp=False)
        torch.manual_seed(sum(grid))
        q, k, v = (x.transpose(1, 2) for x in torch.randn(3, 2, layout.num_tokens, 3, 8).unbind(0))
        out = tiles_attention(q, k, v, layout, res, None, tile=(1, 2, 4), max_elements=max_elements)
        ref = neighborhood_reference(q, k, v, layout, res.kernel_size, res.stride, res.dilation, res.is_causal)
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------------------------------ Triton (interpreter)
_TRITON_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, {root!r})
    from attnplug.kernels.neighborhood import neighborhood_attention, neighborhood_reference
    from attnplug.layout import TokenLayout
    errs = []
    for grid, kernel, stride, dil, causal, text in {cases!r}:
        layout = TokenLayout(*grid, text_tokens=abs(text), text_first=text < 0)
        torch.manual_seed(0)
        q, k, v = torch.randn(3, 1, 2, layout.num_tokens, 16).unbind(0)
        out = neighborhood_attention(q, k, v, kernel, stride, dil, causal, layout=layout, backend="triton",
                                     block_size=16)
        ref = neighborhood_reference(q, k, v, layout, kernel, stride, dil, causal)
        errs.append(float((out - ref).abs().max()))
    print(json.dumps(errs))
    """
)

TRITON_CASES = [
    ((1, 7, 9), (1, 3, 5), (1, 1, 1), (1, 1, 1), (False,) * 3, 3),
    ((3, 6, 6), (3, 3, 3), (1, 1, 3), (1, 2, 1), (False,) * 3, -4),
    ((4, 4, 5), (2, 3, 3), (1, 2, 1), (1, 1, 1), (True, False, False), 0),
]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
@pytest.mark.parametrize("cases", [
    TRITON_CASES[:1],
    pytest.param(TRITON_CASES, marks=pytest.mark.slow),
], ids=["one-case", "all-cases"])
def test_triton_interpreter_matches_reference(cases):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = _TRITON_SCRIPT.format(root=root, cases=cases)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert max(errs) < 2e-5, errs


# ------------------------------------------------------------------------------------------ NATTEN itself
@pytest.mark.skipif(importlib.util.find_spec("natten") is None, reason="natten not installed")
@pytest.mark.parametrize("kernel, stride, dilation, causal", [
    ((5, 3), (1, 1), (1, 1), (False, False)),
    ((5, 5), (3, 3), (1, 1), (False, False)),
    ((5, 3), (5, 1), (1, 1), (False, False)),
    ((3, 3), (1, 1), (2, 1), (False, False)),
    ((5, 5), (2, 2), (1, 1), (False, False)),  # even stride: the group leader is the right-hand centre s // 2
    ((5, 7), (4, 2), (1, 1), (False, False)),  # even strides with a partial last group (9 = 2 * 4 + 1)
    ((3, 3), (2, 3), (2, 1), (False, False)),  # stride within dilation groups
    ((4, 3), (1, 1), (1, 1), (True, False)),
    ((4, 3), (2, 3), (1, 1), (True, False)),  # causal + stride
])
def test_matches_natten_na2d(kernel, stride, dilation, causal):
    """Same call, same argument order, natten.na2d vs attnplug's na2d."""
    import natten

    q, k, v = _natten_qkv(1, (9, 10), 2, 16, seed=4)
    try:
        ref = natten.na2d(q, k, v, kernel, stride, dilation, causal)
    except Exception as e:  # natten's CPU (flex) path may be unavailable in this torch build
        pytest.skip(f"natten.na2d failed on CPU: {type(e).__name__}: {e}")
    out = na2d(q, k, v, kernel, stride, dilation, causal, backend="tiles")
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
