"""Neighbourhood attention vs a brute-force dense masked reference (plain Python loops over each query's window)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from attnplug.layout import TokenLayout
from attnplug.methods.base import CallInfo
from attnplug.methods.neighborhood import (
    NeighborhoodConfig,
    NeighborhoodMethod,
    neighborhood_attention,
    resolve_neighborhood,
)

# --------------------------------------------------------------------------------------------------------------
# Brute-force reference, written from the NATTEN/GNA definition (not from the kernel's mask code).


def window_1d(i: int, length: int, kernel: int, dilation: int, stride: int, causal: bool) -> set[int]:
    """Key coordinates query coordinate ``i`` sees along one dimension."""
    group = list(range(i % dilation, length, dilation))  # positions sharing i's dilation residue
    a = group.index(i)
    if causal:  # the stride group's last position leads; the window still ends at the query
        leader = min((a // stride) * stride + stride - 1, len(group) - 1)
        lo, hi = max(0, leader - kernel + 1), a
    else:
        leader = min((a // stride) * stride + stride // 2, len(group) - 1)  # centre (right-hand for even strides)
        lo = leader - kernel // 2
        lo = max(lo, 0)
        if lo + kernel > len(group):
            lo = len(group) - kernel
        hi = lo + kernel - 1
    return {group[x] for x in range(lo, hi + 1)}


def brute_force_mask(layout: TokenLayout, kernel, dilation, stride, causal) -> torch.Tensor:
    """Boolean ``(N, N)`` mask in the layout's own token order (text first or last)."""
    f, h, w = layout.grid
    n_img = layout.image_tokens
    off = layout.text_tokens if layout.text_first else 0
    is_text = [not (off <= t < off + n_img) for t in range(layout.num_tokens)]
    coords = {}
    for t in range(f):
        for y in range(h):
            for x in range(w):
                coords[off + (t * h + y) * w + x] = (t, y, x)
    mask = torch.zeros(layout.num_tokens, layout.num_tokens, dtype=torch.bool)
    for qi in range(layout.num_tokens):
        if is_text[qi]:
            mask[qi, :] = True
            continue
        allowed = [
            {0} if layout.grid[d] == 1 else  # a dimension of length 1 has one position
            window_1d(coords[qi][d], layout.grid[d], kernel[d] or layout.grid[d], dilation[d], stride[d], causal[d])
            for d in range(3)
        ]
        for ki in range(layout.num_tokens):
            if is_text[ki]:
                mask[qi, ki] = True
            else:
                mask[qi, ki] = all(coords[ki][d] in allowed[d] for d in range(3))
    return mask


def masked_attention(q, k, v, mask, scale=None):
    """float64 softmax attention with a boolean ``(N, N)`` mask."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, -math.inf)
    return (torch.softmax(s, -1) @ v.double()).to(q.dtype)


def _triple(x, fill):
    if isinstance(x, (int, bool)):
        return (x,) * 3
    return tuple(x) if len(x) == 3 else (fill, *x)


CASES = [
    # (frames, height, width), kernel, dilation, stride, causal
    ((1, 1, 13), 5, 1, 1, False),  # 1-D odd length
    ((1, 1, 12), 3, 2, 1, False),  # 1-D even length, dilation
    ((7, 1, 1), 3, 1, 1, True),  # 1-D causal over frames
    ((1, 7, 9), (3, 5), 1, 1, False),  # 2-D non-square, odd
    ((1, 8, 8), 5, 1, 2, False),  # 2-D even, strided
    ((1, 9, 9), 3, 1, 3, False),  # 2-D blocked (stride = kernel)
    ((1, 10, 6), (5, 3), (2, 1), 1, False),  # 2-D dilation on one axis
    ((1, 8, 11), 5, 1, (3, 4), False),  # strides not dividing the grid
    ((4, 5, 6), 3, 1, 1, False),  # 3-D, even frames
    ((4, 5, 5), (2, 3, 3), 1, (1, 2, 1), (True, False, False)),  # causal frames, strided rows
    ((3, 6, 7), (3, 3, 5), (1, 2, 1), (1, 1, 2), False),  # 3-D dilation + stride
]


@pytest.mark.parametrize("text", [0, 3, -4], ids=["no-text", "text-last", "text-first"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-k{c[1]}-d{c[2]}-s{c[3]}-c{c[4]}" for c in CASES])
@pytest.mark.parametrize("backend", ["tiles", "torch", "reference"])
def test_matches_brute_force(case, text, backend):
    grid, kernel, dilation, stride, causal = case
    layout = TokenLayout(*grid, text_tokens=abs(text), text_first=text < 0)
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, layout.num_tokens, 16).unbind(0)
    out = neighborhood_attention(q, k, v, layout, kernel, dilation, stride, causal, backend=backend, block_size=8)
    mask = brute_force_mask(layout, _triple(kernel, None) if not isinstance(kernel, int) else (kernel,) * 3,
                            _triple(dilation, 1), _triple(stride, 1), _triple(causal, False))
    ref = masked_attention(q, k, v, mask)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_two_tuple_leaves_frames_unrestricted():
    layout = TokenLayout(3, 5, 5)
    res = resolve_neighborhood(layout.grid, (3, 3))
    assert res.kernel_size == (3, 3, 3) and res.full == (True, False, False)
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 1, 2, layout.num_tokens, 8).unbind(0)
    out = neighborhood_attention(q, k, v, layout, (3, 3), backend="torch", block_size=16)
    ref = masked_attention(q, k, v, brute_force_mask(layout, (3, 3, 3), (1,) * 3, (1,) * 3, (False,) * 3))
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("grid", [(4, 5, 5), (2, 6, 4)])
def test_method_clamps_even_full_dimensions(grid):
    """kernel >= an even-length dimension makes it full (the method clamps; the functional op would raise)."""
    layout = TokenLayout(*grid, text_tokens=2)
    method = NeighborhoodConfig(kernel_size=(9, 3, 3), backend="torch", block_size=16).build()
    torch.manual_seed(2)
    q, k, v = torch.randn(3, 2, 2, layout.num_tokens, 8).unbind(0)
    out = method(q, k, v, layout)
    full_f = grid[0]  # the brute force accepts kernel = length (whole dimension) for any parity
    mask = brute_force_mask(layout, (full_f, 3, 3), (1,) * 3, (1,) * 3, (False,) * 3)
    torch.testing.assert_close(out, masked_attention(q, k, v, mask), atol=2e-5, rtol=1e-4)


def test_kernel_covering_grid_is_dense_sdpa(caplog):
    layout = TokenLayout(1, 6, 7, text_tokens=3, text_first=True)
    torch.manual_seed(3)
    q, k, v = torch.randn(3, 2, 2, layout.num_tokens, 8).unbind(0)
    method = NeighborhoodConfig(kernel_size=15).build()
    out = method(q, k, v, layout)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-6, rtol=0)


def test_scale_with_level():
    cfg = NeighborhoodConfig(kernel_size=(9, 9), scale_with_level=True)
    info = CallInfo(latent_grid=(1, 32, 32))
    assert cfg.resolve(TokenLayout(1, 32, 32), info).kernel_size == (1, 9, 9)
    assert cfg.resolve(TokenLayout(1, 16, 16), info).kernel_size == (1, 5, 5)
    assert cfg.resolve(TokenLayout(1, 8, 8), info).kernel_size == (1, 3, 3)
    assert cfg.resolve(TokenLayout(1, 4, 4), info).is_dense is False  # kernel 3 on 4x4 is still local


def test_from_training_resolution():
    cfg = NeighborhoodConfig.from_training_resolution((60, 104))
    assert cfg.kernel_size == (None, 61, 105)
    at_train = cfg.resolve(TokenLayout(5, 60, 104))
    assert at_train.is_dense
    above = cfg.resolve(TokenLayout(5, 90, 160))
    assert above.kernel_size == (5, 61, 105) and not above.is_dense
    assert NeighborhoodConfig.from_training_resolution((64, 64), family="unet").scale_with_level


# --------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernel_size=4), "kernel_size for frames is 4.*odd"),
        (dict(kernel_size=(3, 6)), "kernel_size for width is 6.*odd"),
        (dict(kernel_size=0), "kernel_size for frames must be >= 1"),
        (dict(kernel_size=(3, -1)), "kernel_size for width must be >= 1"),
        (dict(dilation=0), "dilation for frames must be >= 1"),
        (dict(stride=(1, 0)), "stride for width must be >= 1"),
        (dict(kernel_size=3, stride=5), "stride for frames is 5.*<= 3"),
        (dict(kernel_size=3.0), "must be an int or a tuple"),
        (dict(kernel_size=(3, 3, 3, 3)), "tuple of 2 .* or 3"),
        (dict(backend="cuda"), "backend must be one of"),
        (dict(is_causal="yes"), "is_causal must be a bool"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        NeighborhoodConfig(**kwargs)


def test_even_kernel_allowed_when_causal():
    NeighborhoodConfig(kernel_size=(4, 3, 3), is_causal=(True, False, False))


@pytest.mark.parametrize(
    "grid, kwargs, match",
    [
        ((1, 5, 9), dict(kernel_size=7), "kernel_size for height is 7, larger than the grid's height length 5.*<= 5"),
        ((1, 9, 6), dict(kernel_size=(3, 7)), "kernel_size for width is 7.*width length 6.*<= 6"),
        ((1, 9, 9), dict(kernel_size=3, dilation=(1, 4)),
         r"kernel_size \* dilation for width is 3 \* 4 = 12.*width length 9.*<= 9 \(dilation <= 3\)"),
        ((1, 9, 9), dict(kernel_size=(3, 4)), "kernel_size for width is 4.*odd"),
    ],
)
def test_functional_strict_errors(grid, kwargs, match):
    layout = TokenLayout(*grid)
    q = torch.randn(1, 1, layout.num_tokens, 8)
    with pytest.raises(ValueError, match=match):
        neighborhood_attention(q, q, q, layout, **kwargs)


def test_functional_checks_layout():
    q = torch.randn(1, 1, 20, 8)
    with pytest.raises(ValueError, match="describes 25 tokens"):
        neighborhood_attention(q, q, q, TokenLayout(1, 5, 5), 3)


def test_method_hands_masked_calls_back():
    layout = TokenLayout(1, 4, 4)
    q = torch.randn(1, 1, 16, 8)
    method = NeighborhoodMethod(NeighborhoodConfig(kernel_size=3))
    assert method(q, q, q, layout, torch.ones(16, 16, dtype=torch.bool)) is None


# --------------------------------------------------------------------------------------------------------------
# Triton path under the interpreter (subprocess, so TRITON_INTERPRET is set before triton is imported)

_TRITON_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    from test_neighborhood import brute_force_mask, masked_attention
    from attnplug.layout import TokenLayout
    from attnplug.methods.neighborhood import neighborhood_attention
    errs = []
    for grid, kernel, dil, stride, causal, text in {cases!r}:
        layout = TokenLayout(*grid, text_tokens=abs(text), text_first=text < 0)
        torch.manual_seed(0)
        q, k, v = torch.randn(3, 1, 2, layout.num_tokens, 16).unbind(0)
        out = neighborhood_attention(q, k, v, layout, kernel, dil, stride, causal, backend="triton", block_size=16)
        ref = masked_attention(q, k, v, brute_force_mask(layout, kernel, dil, stride, causal))
        errs.append(float((out - ref).abs().max()))
    print(json.dumps(errs))
    """
)

TRITON_CASES = [
    ((1, 7, 9), (1, 3, 5), (1, 1, 1), (1, 1, 1), (False,) * 3, 3),
    ((3, 6, 6), (3, 3, 3), (1, 2, 1), (1, 1, 3), (False,) * 3, -4),
    ((4, 4, 5), (2, 3, 3), (1, 1, 1), (1, 2, 1), (True, False, False), 0),
]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
@pytest.mark.parametrize("cases", [
    TRITON_CASES[:1],
    pytest.param(TRITON_CASES, marks=pytest.mark.slow),
], ids=["one-case", "all-cases"])
def test_triton_interpreter_matches_brute_force(cases):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = _TRITON_SCRIPT.format(root=root, tests=os.path.dirname(os.path.abspath(__file__)), cases=cases)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert max(errs) < 2e-5, errs


# --------------------------------------------------------------------------------------------------------------
# Optional comparison with NATTEN itself


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
    from natten import na2d

    layout = TokenLayout(1, 9, 10)
    torch.manual_seed(4)
    q, k, v = torch.randn(3, 1, 2, layout.num_tokens, 16).unbind(0)
    to_natten = lambda x: x.reshape(1, 2, 9, 10, 16).permute(0, 2, 3, 1, 4).contiguous()  # noqa: E731
    try:
        ref = na2d(to_natten(q), to_natten(k), to_natten(v), kernel_size=kernel, stride=stride, dilation=dilation,
                   is_causal=causal)
    except Exception as e:  # natten's CPU (flex) path may be unavailable in this torch build
        pytest.skip(f"natten.na2d failed on CPU: {type(e).__name__}: {e}")
    ref = ref.permute(0, 3, 1, 2, 4).reshape(1, 2, layout.num_tokens, 16)
    out = neighborhood_attention(q, k, v, layout, kernel, dilation, stride, causal, backend="torch", block_size=16)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tile", [(1, 2, 3), (2, 4, 1), (3, 5, 5)])
@pytest.mark.parametrize("case", [CASES[3], CASES[7], CASES[9], CASES[10]], ids=lambda c: f"{c[0]}")
def test_tiles_path_any_tile_size(case, tile):
    """The tiles path is exact for any tile shape (partial, padded tiles; text first)."""
    from attnplug.methods.neighborhood import _tiles_attention

    grid, kernel, dilation, stride, causal = case
    layout = TokenLayout(*grid, text_tokens=2, text_first=True)
    res = resolve_neighborhood(grid, kernel, dilation, stride, causal, clamp=False)
    torch.manual_seed(5)
    q, k, v = torch.randn(3, 2, 2, layout.num_tokens, 8).unbind(0)
    out = _tiles_attention(q, k, v, layout, res, None, tile=tuple(min(t, n) for t, n in zip(tile, grid)))
    mask = brute_force_mask(layout, res.kernel_size, res.dilation, res.stride, res.is_causal)
    torch.testing.assert_close(out, masked_attention(q, k, v, mask), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("max_elements", [1, 4096, 1 << 23], ids=["one-tile-per-chunk", "few-tiles", "one-chunk"])
def test_tiles_path_chunks_and_token_major_views(max_elements):
    """Chunked gathers into the reused buffers, with (B, H, N, D) views of (B, N, H, D) tensors (diffusers' layout),
    stay exact; a second call with other shapes reuses (and grows) the buffers."""
    from attnplug.methods.neighborhood import _tiles_attention

    for grid, kernel, text in (((1, 9, 10), (1, 5, 3), 3), ((2, 6, 7), (1, 3, 5), 0)):
        layout = TokenLayout(*grid, text_tokens=text)
        res = resolve_neighborhood(grid, kernel, 1, 1, False, clamp=False)
        torch.manual_seed(sum(grid))
        q, k, v = (x.transpose(1, 2) for x in torch.randn(3, 2, layout.num_tokens, 3, 8).unbind(0))
        out = _tiles_attention(q, k, v, layout, res, None, tile=(1, 2, 4), max_elements=max_elements)
        mask = brute_force_mask(layout, res.kernel_size, res.dilation, res.stride, res.is_causal)
        torch.testing.assert_close(out, masked_attention(q, k, v, mask), atol=2e-5, rtol=1e-4)
