"""NeighborhoodConfig / NeighborhoodMethod: argument rule, clamping, levels, hand-back, validation (the kernels are
tested in tests/kernels/test_neighborhood_*.py)."""

from __future__ import annotations

import pytest
import torch

from attnplug.config import field_specs
from attnplug.kernels.neighborhood import neighborhood_reference
from attnplug.layout import TokenLayout
from attnplug.methods.base import CallInfo
from attnplug.methods.neighborhood import NeighborhoodConfig, NeighborhoodMethod


@pytest.mark.parametrize("grid", [(4, 5, 5), (2, 6, 4)])
@pytest.mark.parametrize("backend", ["tiles", "torch"])
def test_method_clamps_even_full_dimensions(grid, backend):
    """A kernel >= an even-length dimension makes it full (the method clamps; the functional op would raise)."""
    layout = TokenLayout(*grid, text_tokens=2)
    method = NeighborhoodConfig(kernel_size=(9, 3, 3), backend=backend, block_size=16).build()
    torch.manual_seed(2)
    q, k, v = torch.randn(3, 2, 2, layout.num_tokens, 8).unbind(0)
    out = method(q, k, v, layout)
    ref = neighborhood_reference(q, k, v, layout, (None, 3, 3), (1,) * 3, (1,) * 3, (False,) * 3)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_int_kernel_leaves_frames_unrestricted():
    """An int means (height, width) in every config; frames are restricted only by a 3-tuple."""
    cfg = NeighborhoodConfig(kernel_size=3)
    assert cfg.resolve(TokenLayout(6, 9, 9)).kernel_size == (6, 3, 3)
    assert NeighborhoodConfig(kernel_size=(3, 3, 3)).resolve(TokenLayout(6, 9, 9)).kernel_size == (3, 3, 3)
    assert NeighborhoodConfig(stride=3, kernel_size=3).resolve(TokenLayout(6, 9, 9)).stride == (1, 3, 3)


def test_window_covering_grid_is_handed_back_with_a_reason():
    layout = TokenLayout(1, 6, 7, text_tokens=3, text_first=True)
    q, k, v = torch.randn(3, 2, 2, layout.num_tokens, 8).unbind(0)
    method = NeighborhoodConfig(kernel_size=15).build()
    method.last_reason()  # drop anything left by other tests on this thread
    assert method(q, k, v, layout) is None
    assert method.last_reason() == "window-covers-grid"
    assert method.last_reason() is None  # read once


def test_method_hands_masked_calls_back():
    layout = TokenLayout(1, 4, 4)
    q = torch.randn(1, 1, 16, 8)
    method = NeighborhoodMethod(NeighborhoodConfig(kernel_size=3))
    assert method(q, q, q, layout, torch.ones(16, 16, dtype=torch.bool)) is None
    assert method.last_reason() == "attention-mask"


def test_hand_back_reasons_are_per_thread():
    import threading

    method = NeighborhoodConfig(kernel_size=15).build()
    layout = TokenLayout(1, 4, 4)
    q = torch.randn(1, 1, 16, 8)
    seen = {}

    def other():
        seen["other"] = method.last_reason()

    method.last_reason()
    method(q, q, q, layout)  # hands back on this thread
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["other"] is None and method.last_reason() == "window-covers-grid"


def test_scale_with_level_uses_info_level():
    cfg = NeighborhoodConfig(kernel_size=(9, 9), scale_with_level=True)
    layout = TokenLayout(1, 32, 32)
    assert cfg.resolve(layout, CallInfo(level=0)).kernel_size == (1, 9, 9)
    assert cfg.resolve(layout, CallInfo(level=1)).kernel_size == (1, 5, 5)
    assert cfg.resolve(layout, CallInfo(level=2)).kernel_size == (1, 3, 3)
    # the level, not the grid ratio, decides: a 16x16 grid at level 0 keeps the full kernel
    assert cfg.resolve(TokenLayout(1, 16, 16), CallInfo(level=0, latent_grid=(1, 32, 32))).kernel_size == (1, 9, 9)
    assert NeighborhoodConfig(kernel_size=(9, 9)).resolve(layout, CallInfo(level=2)).kernel_size == (1, 9, 9)


def test_from_training_resolution():
    cfg = NeighborhoodConfig.from_training_resolution((60, 104))
    assert cfg.kernel_size == (None, 61, 105)
    assert cfg.resolve(TokenLayout(5, 60, 104)).is_dense
    above = cfg.resolve(TokenLayout(5, 90, 160))
    assert above.kernel_size == (5, 61, 105) and not above.is_dense
    assert NeighborhoodConfig.from_training_resolution((64, 64), family="unet").scale_with_level


def test_field_metadata_drives_choices():
    specs = {s.name: s for s in field_specs(NeighborhoodConfig)}
    assert specs["backend"].choices == ("auto", "triton", "torch", "flex", "natten", "tiles", "reference")
    assert specs["block_size"].min == 1 and specs["kernel_size"].min == 1
    assert [s.name for s in field_specs(NeighborhoodConfig)][:4] == ["kernel_size", "stride", "dilation", "is_causal"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernel_size=4), "kernel_size for height is 4.*odd"),
        (dict(kernel_size=(3, 6)), "kernel_size for width is 6.*odd"),
        (dict(kernel_size=0), "kernel_size for height must be >= 1"),
        (dict(kernel_size=(3, -1)), "kernel_size for width must be >= 1"),
        (dict(dilation=0), "dilation for height must be >= 1"),
        (dict(stride=(1, 0)), "stride for width must be >= 1"),
        (dict(kernel_size=3, stride=5), "stride for height is 5.*<= 3"),
        (dict(kernel_size=3.0), "must be an int or None, or a tuple"),
        (dict(kernel_size=(3, 3, 3, 3)), "tuple of 2 or 3"),
        (dict(backend="cuda"), "backend must be one of"),
        (dict(block_size=0), "block_size must be in"),
        (dict(block_size="64"), "block_size must be an int"),
        (dict(is_causal="yes"), "is_causal must be a bool"),
        (dict(kernel_size=(None, 3, 3), stride=(2, 1, 1)), "frames dimension is unrestricted"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        NeighborhoodConfig(**kwargs)


def test_even_kernel_allowed_when_causal():
    NeighborhoodConfig(kernel_size=(4, 3, 3), is_causal=(True, False, False))


def test_lists_become_tuples():
    assert NeighborhoodConfig(kernel_size=[5, 7]).kernel_size == (5, 7)
