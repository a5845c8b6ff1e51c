"""End-to-end: neighbourhood attention applied to tiny models of six families."""

from __future__ import annotations

import pytest
import torch

import attnplug
from attnplug.methods.neighborhood import NeighborhoodConfig
from attnplug.testing import forward, tiny_model

E2E_FAMILIES = ["unet", "pixart", "sd3", "flux", "wan", "cogvideox"]


def _self_counts(st: dict) -> dict:
    return st["self"]


@pytest.mark.parametrize("backend", ["auto", "torch"], ids=["tiles", "kernel-torch"])
@pytest.mark.parametrize("family", E2E_FAMILIES)
def test_end_to_end_kernel_local(family, backend):
    model, inputs = tiny_model(family, height=16, width=16, frames=3, text=5)
    dense = forward(model, inputs)
    attnplug.apply(model, NeighborhoodConfig(kernel_size=3, backend=backend))
    try:
        out = forward(model, inputs)
        st = attnplug.stats(model)
    finally:
        attnplug.remove(model)
    assert _self_counts(st)["method"] > 0, st
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, dense, atol=1e-5)  # the window really restricts attention


@pytest.mark.parametrize("family", E2E_FAMILIES)
def test_end_to_end_window_covering_grid_is_stock(family):
    """A window covering the whole grid is not counted as the method: the calls go back to stock attention with the
    reason ``window-covers-grid``, and the output is the stock output."""
    model, inputs = tiny_model(family, height=16, width=16, frames=3, text=5)
    dense = forward(model, inputs)
    with attnplug.applied(model, NeighborhoodConfig(kernel_size=(3, 17, 17))):
        out = forward(model, inputs)
        st = attnplug.stats(model)
    counts = _self_counts(st)
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-5)
    assert counts["method"] == 0 and counts["reasons"].get("window-covers-grid", 0) > 0, st


def test_standalone_processor():
    model, inputs = tiny_model("pixart", height=16, width=16)
    dense = forward(model, inputs)
    model.set_attn_processor(attnplug.AttnplugProcessor(NeighborhoodConfig(kernel_size=5)))
    out = forward(model, inputs)
    assert torch.isfinite(out).all() and not torch.allclose(out, dense, atol=1e-5)
