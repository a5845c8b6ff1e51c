"""Shifted-window attention (HiDiffusion MSW-MSA) vs a brute-force masked reference built with Python loops."""

from __future__ import annotations

import math

import pytest
import torch

import attnplug
from attnplug.layout import TokenLayout
from attnplug.methods.base import CallInfo
from attnplug.methods.window import WindowConfig, WindowProcessor, window_attention, window_plan
from attnplug.testing import forward, tiny_model


def brute_force_window_mask(layout: TokenLayout, window, shift) -> torch.Tensor:
    """``(N, N)`` bool in the layout's token order: image tokens see the image tokens whose cyclically shifted
    coordinates fall in the same window in every dimension, and all text; text sees everything."""
    f, h, w = layout.grid
    off = layout.text_tokens if layout.text_first else 0
    n = layout.num_tokens
    win_id = {}
    for t in range(f):
        for y in range(h):
            for x in range(w):
                c = (t, y, x)
                win_id[off + (t * h + y) * w + x] = tuple(((c[d] - shift[d]) % layout.grid[d]) // window[d]
                                                          for d in range(3))
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            if i not in win_id or j not in win_id:
                mask[i, j] = True
            else:
                mask[i, j] = win_id[i] == win_id[j]
    return mask


def masked_attention(q, k, v, mask, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    return (torch.softmax(s.masked_fill(~mask, -math.inf), -1) @ v.double()).to(q.dtype)


CASES = [
    # grid, window_size (None = fraction 0.5 on height/width), shift index
    ((1, 8, 8), None, 0),  # 2x2 windows, divides
    ((1, 8, 8), None, 1),  # shifted by a quarter window
    ((1, 9, 7), None, 3),  # odd sides: windows 5 x 4, padded
    ((1, 6, 10), (4, 3), 2),  # explicit windows, padding on both axes
    ((3, 6, 6), (2, 3, 3), 1),  # 3-D windows, frames padded
    ((4, 5, 6), None, 2),  # video, frames unwindowed
]


@pytest.mark.parametrize("text", [0, 3, -4], ids=["no-text", "text-last", "text-first"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-w{c[1]}-s{c[2]}" for c in CASES])
def test_matches_brute_force(case, text):
    grid, size, idx = case
    layout = TokenLayout(*grid, text_tokens=abs(text), text_first=text < 0)
    plan = window_plan(grid, size, 0.5, shift_index=idx, num_shifts=4)
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, layout.num_tokens, 8).unbind(0)
    out = window_attention(q, k, v, layout, plan, scale=0.3)
    ref = masked_attention(q, k, v, brute_force_window_mask(layout, plan.window, plan.shift), scale=0.3)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_plan_rule():
    p = window_plan((1, 9, 7), None, 0.5, shift_index=3)
    assert p.window == (1, 5, 4) and p.counts == (1, 2, 2) and p.padding == (0, 1, 1) and p.shift == (0, 3, 3)
    assert window_plan((1, 64, 64), None, 0.5, shift_index=2).shift == (0, 16, 16)  # HiDiffusion: w // 4 * 2
    assert window_plan((1, 8, 8), 16, shift_index=1).is_dense


def test_shift_schedules():
    assert [WindowConfig(shift="cycle").shift_index(s) for s in range(6)] == [0, 1, 2, 3, 0, 1]
    assert WindowConfig(shift="none").shift_index(5) == 0
    rnd = [WindowConfig(shift="random", seed=1).shift_index(s) for s in range(20)]
    assert rnd == [WindowConfig(shift="random", seed=1).shift_index(s) for s in range(20)]  # reproducible
    assert len(set(rnd)) > 1 and all(0 <= r < 4 for r in rnd)


def test_highest_level_only():
    method = WindowConfig().build()
    q = torch.randn(1, 1, 16, 8)
    info = CallInfo(latent_grid=(1, 8, 8), step=1)
    assert method(q, q, q, TokenLayout(1, 4, 4), info=info) is None
    assert method(q, q, q, TokenLayout(1, 4, 4), info=CallInfo(latent_grid=(1, 4, 4))) is not None
    assert WindowConfig(levels="all").build()(q, q, q, TokenLayout(1, 4, 4), info=info) is not None


def test_full_window_is_dense():
    layout = TokenLayout(1, 5, 5, text_tokens=2)
    q, k, v = torch.randn(3, 1, 2, 27, 8).unbind(0)
    out = WindowConfig(window_fraction=1.0).build()(q, k, v, layout)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(window_fraction=0.0), "window_fraction for height must be in"),
        (dict(window_fraction=(1.0, 0.5, 1.5)), "window_fraction for width must be in"),
        (dict(window_size=(4, 0)), "window_size for width must be >= 1"),
        (dict(window_size=2.5), "window_size must be a int"),
        (dict(shift="left"), "shift must be one of"),
        (dict(num_shifts=0), "num_shifts must be an int >= 1"),
        (dict(levels="top"), "levels must be one of"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        WindowConfig(**kwargs)


@pytest.mark.parametrize("family", ["unet", "pixart", "sd3", "flux", "wan", "cogvideox"])
def test_end_to_end(family):
    model, inputs = tiny_model(family, height=16, width=16, frames=3, text=5)
    dense = forward(model, inputs)
    with attnplug.applied(model, WindowConfig()):
        out = forward(model, inputs)
        st = attnplug.stats(model)
    assert st.get("method", 0) > 0, st
    assert torch.isfinite(out).all() and not torch.allclose(out, dense, atol=1e-5)
    with attnplug.applied(model, WindowConfig(window_fraction=1.0)):
        full = forward(model, inputs)
        assert attnplug.stats(model).get("method", 0) > 0
    torch.testing.assert_close(full, dense, atol=1e-5, rtol=1e-5)


def test_unet_lower_levels_stay_dense():
    model, inputs = tiny_model("unet", height=16, width=16)
    with attnplug.applied(model, WindowConfig()):
        forward(model, inputs)
        st = attnplug.stats(model)
    assert st["method"] > 0 and st.get("dense: method handed the call back", 0) > 0, st


def test_standalone_processor():
    model, inputs = tiny_model("pixart", height=16, width=16)
    model.set_attn_processor(WindowProcessor(WindowConfig()))
    assert torch.isfinite(forward(model, inputs)).all()
    with pytest.raises(TypeError, match="WindowConfig"):
        WindowProcessor(attnplug.DenseConfig())
