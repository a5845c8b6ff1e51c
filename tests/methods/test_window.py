"""Shifted-window attention method (HiDiffusion MSW-MSA): which levels and calls it windows, the shift schedule,
config validation, threads and end to end (the kernel against its brute-force reference is in
tests/kernels/test_window_attention.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnplug
from attnplug.kernels.window import window_attention_reference
from attnplug.layout import TokenLayout
from attnplug.methods.base import CallInfo
from attnplug.methods.window import WindowConfig, WindowMethod
from attnplug.testing import forward, run_concurrently, tiny_model


def _qkv(layout: TokenLayout, seed=0, batch=1, heads=2, dim=8):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, layout.num_tokens, dim, generator=g) for _ in range(3))


class _Spy(WindowMethod):
    def __init__(self, config):
        super().__init__(config)
        self.calls = []

    def __call__(self, q, k, v, layout, mask=None, info=None):
        out = super().__call__(q, k, v, layout, mask, info)
        self.calls.append((layout, info, out is not None))
        return out


def test_method_matches_the_reference_at_the_step_shift():
    layout = TokenLayout(1, 9, 7, text_tokens=3)
    q, k, v = _qkv(layout)
    cfg = WindowConfig()
    out = WindowMethod(cfg)(q, k, v, layout, info=CallInfo(step=3, scale=0.3))
    plan = cfg.plan(layout, 3)
    assert plan.shift == (0, 3, 3)
    ref = window_attention_reference(q, k, v, layout, plan.window, plan.shift, scale=0.3)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_level_zero_runs_on_a_grid_smaller_than_the_latent_grid():
    """SDXL-like U-Nets have no attention at the latent resolution: level 0 (the finest *attention* grid) is windowed
    although its grid is half the latent grid."""
    layout = TokenLayout(1, 8, 8)
    q, k, v = _qkv(layout)
    out = WindowConfig().build()(q, k, v, layout, info=CallInfo(latent_grid=(1, 16, 16), level=0, step=1))
    assert out is not None
    assert (out - F.scaled_dot_product_attention(q, k, v)).abs().max() > 1e-3  # windowed, not dense


def test_levels_above_max_level_are_handed_back():
    layout = TokenLayout(1, 4, 4)
    q, k, v = _qkv(layout)
    info = CallInfo(latent_grid=(1, 8, 8), level=1, step=1)
    assert WindowConfig().build()(q, k, v, layout, info=info) is None
    assert WindowConfig(max_level=1).build()(q, k, v, layout, info=info) is not None
    assert WindowConfig(max_level=None).build()(q, k, v, layout, info=CallInfo(level=7)) is not None


def test_window_covering_the_grid_is_handed_back():
    layout = TokenLayout(1, 5, 5, text_tokens=2)
    q, k, v = _qkv(layout)
    assert WindowConfig(window_fraction=1.0).build()(q, k, v, layout) is None
    assert WindowConfig(window_size=8).build()(q, k, v, layout) is None
    assert WindowConfig(window_size=(2, 8, 8)).build()(q, k, v, TokenLayout(1, 5, 5, text_tokens=2)) is None


def test_shift_schedules():
    assert [WindowConfig(shift="cycle").shift_index(s) for s in range(6)] == [0, 1, 2, 3, 0, 1]
    assert WindowConfig(shift="none").shift_index(5) == 0
    rnd = [WindowConfig(shift="random", seed=1).shift_index(s) for s in range(20)]
    assert rnd == [WindowConfig(shift="random", seed=1).shift_index(s) for s in range(20)]  # reproducible
    assert len(set(rnd)) > 1 and all(0 <= r < 4 for r in rnd)


def test_sizes_normalised_one_way():
    assert WindowConfig(window_size=4).window_size == (4, 4)  # an int covers height and width
    assert WindowConfig(window_size=[2, 4, 4]).window_size == (2, 4, 4)
    assert WindowConfig(window_fraction=(0.5, 0.25)).window_fraction == (0.5, 0.25)
    assert WindowConfig(window_size=4).plan(TokenLayout(3, 8, 8)).window == (3, 4, 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(window_fraction=0.0), "window_fraction for height must be > 0"),
        (dict(window_fraction=(1.0, 0.5, 1.5)), "window_fraction for width must be <= 1"),
        (dict(window_size=(4, 0)), "window_size for width must be >= 1"),
        (dict(window_size=2.5), "window_size must be"),
        (dict(shift="left"), "shift must be one of"),
        (dict(num_shifts=0), "num_shifts must be in"),
        (dict(max_level=-1), "max_level must be in"),
        (dict(max_level="highest"), "max_level must be an int"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        WindowConfig(**kwargs)


def test_two_threads_give_the_single_thread_results():
    method = WindowConfig(window_size=(3, 4)).build()
    layouts = [TokenLayout(1, 10, 9, text_tokens=3), TokenLayout(2, 7, 11)]  # both padded
    inputs = [[(*_qkv(layouts[t], seed=10 * t + i), CallInfo(step=i)) for i in range(12)] for t in range(2)]
    expected = [[method(q, k, v, layouts[t], info=info) for q, k, v, info in inputs[t]] for t in range(2)]
    results = run_concurrently(
        [lambda t=t: [method(q, k, v, layouts[t], info=info) for q, k, v, info in inputs[t]] for t in range(2)])
    for t in range(2):
        assert len(results[t]) == len(expected[t])
        assert all(torch.equal(a, b) for a, b in zip(results[t], expected[t]))


@pytest.mark.parametrize("family", ["unet", "pixart", "sd3", "flux", "wan", "cogvideox"])
def test_end_to_end(family):
    model, inputs = tiny_model(family, height=16, width=16, frames=3, text=5)
    dense = forward(model, inputs)
    with attnplug.applied(model, WindowConfig()):
        out = forward(model, inputs)
        st = attnplug.stats(model)
    assert st["self"]["method"] > 0, st
    assert torch.isfinite(out).all() and not torch.allclose(out, dense, atol=1e-5)
    with attnplug.applied(model, WindowConfig(window_fraction=1.0)):
        full = forward(model, inputs)
        st = attnplug.stats(model)
    assert st["self"]["method"] == 0, st  # a covering window is stock attention, and counted so
    torch.testing.assert_close(full, dense, atol=1e-5, rtol=1e-5)


def _sdxl_like_unet():
    from attnplug.testing import sdxl_like_unet

    return sdxl_like_unet()


def test_sdxl_like_unet_windows_its_finest_attention_level():
    """F1: the defaults window the highest-resolution attention blocks of a U-Net without attention at the latent
    resolution (before, every call was handed back)."""
    model, inputs = _sdxl_like_unet()
    dense = forward(model, inputs)
    spy = _Spy(WindowConfig())
    with attnplug.applied(model, spy):
        out = forward(model, inputs)
        st = attnplug.stats(model)
    assert st["self"]["method"] > 0 and not torch.allclose(out, dense, atol=1e-5), st
    ran = {layout.grid for layout, info, ran in spy.calls if ran}
    assert ran == {(1, 8, 8)}, spy.calls  # the 8x8 attention blocks, not the 4x4 ones
    assert all(ran == (info.level <= 0) for layout, info, ran in spy.calls)


def test_unet_lower_levels_stay_stock():
    model, inputs = tiny_model("unet", height=16, width=16)
    spy = _Spy(WindowConfig())
    with attnplug.applied(model, spy):
        forward(model, inputs)
        st = attnplug.stats(model)
    assert st["self"]["method"] > 0 and st["self"]["stock"] > 0, st
    assert all(ran == (info.level == 0) for layout, info, ran in spy.calls)
    assert {info.level for _, info, _ in spy.calls} == {0, 1}


def test_standalone_processor():
    model, inputs = tiny_model("pixart", height=16, width=16)
    dense = forward(model, inputs)
    model.set_attn_processor(attnplug.AttnplugProcessor(WindowConfig()))
    out = forward(model, inputs)
    assert torch.isfinite(out).all() and not torch.allclose(out, dense, atol=1e-5)
