"""FreeSwim dual path: windowed self-attention + full-branch cross-attention override with a refresh period.

The reference for the override is built without attnplug's interception: forward hooks on the cross-attention
modules (``attn2``) record the outputs of a dense run and substitute them into a windowed run.
"""

from __future__ import annotations

import pytest
import torch

import attnplug
from attnplug.layout import TokenLayout
from attnplug.methods.freeswim import (
    FreeSwimConfig,
    FreeSwimMethod,
    FreeSwimProcessor,
    apply_freeswim,
    disable_dual_path,
    enable_dual_path,
    remove_freeswim,
)
from attnplug.methods.neighborhood import NeighborhoodConfig, neighborhood_attention
from attnplug.testing import forward, tiny_model


def cross_modules(model):
    return [(n, m) for n, m in model.named_modules() if n.endswith("attn2")]


def record_cross(model, inputs):
    """Dense run; returns {module name: attn2 output}."""
    outs, handles = {}, []
    for name, mod in cross_modules(model):
        handles.append(mod.register_forward_hook(lambda m, a, o, name=name: outs.__setitem__(name, o.detach())))
    try:
        forward(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return outs


def windowed_with_cross(model, inputs, window: NeighborhoodConfig, cross: dict):
    """Windowed run (attnplug neighbourhood) whose attn2 outputs are replaced by ``cross``."""
    handles = [mod.register_forward_hook(lambda m, a, o, name=name: cross.get(name))
               for name, mod in cross_modules(model)]
    try:
        with attnplug.applied(model, window):
            return forward(model, inputs)
    finally:
        for h in handles:
            h.remove()


def wan(timestep=500, seed=0):
    model, inputs = tiny_model("wan", height=20, width=20, frames=3, text=5, seed=seed)
    inputs["timestep"] = torch.tensor([timestep] * 2)
    return model, inputs


def test_config():
    cfg = FreeSwimConfig(train_grid=(6, 8))
    assert cfg.window.kernel_size == (None, 7, 9)
    assert FreeSwimConfig(train_grid=(3, 6, 8)).window.kernel_size == (3, 7, 9)
    with pytest.raises(ValueError, match="train_grid must be"):
        FreeSwimConfig(train_grid=7)
    with pytest.raises(ValueError, match="train_grid for width must be >= 1"):
        FreeSwimConfig(train_grid=(6, 0))
    with pytest.raises(ValueError, match="refresh_every must be an int >= 1"):
        FreeSwimConfig(refresh_every=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        FreeSwimConfig(backend="gpu")


def test_window_branch_is_inward_sliding_window():
    layout = TokenLayout(2, 9, 11)
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, layout.num_tokens, 8).unbind(0)
    out = FreeSwimMethod(FreeSwimConfig(train_grid=(4, 6)))(q, k, v, layout)
    ref = neighborhood_attention(q, k, v, layout, (None, 5, 7))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_cross_hook_caches_per_pass_and_layer():
    method = FreeSwimMethod(FreeSwimConfig(train_grid=(4, 4)))
    from attnplug.methods.base import CallInfo

    q, k, v = torch.randn(3, 1, 2, 16, 8).unbind(0)
    info = CallInfo(layer_name="blocks.0.attn2")
    assert method.cross_attention(q, k[:, :, :5], v[:, :, :5], None, info) is None  # nothing cached yet
    method.mode = "full"
    full = method.cross_attention(q, k[:, :, :5], v[:, :, :5], None, info)
    method.mode = "window"
    assert torch.equal(method.cross_attention(q * 0, k[:, :, :5], v[:, :, :5], None, info), full)
    assert method.cross_attention(q, k, v, None, CallInfo(layer_name="other")) is None
    method.pass_index = 1
    assert method.cross_attention(q, k, v, None, info) is None


def test_dual_path_equals_override_reference():
    """One refresh step: output == windowed run with attn2 outputs replaced by a dense run's."""
    model, inputs = wan()
    cfg = FreeSwimConfig(train_grid=(4, 4), refresh_every=1)
    dense_cross = record_cross(model, inputs)
    ref = windowed_with_cross(model, inputs, cfg.window, dense_cross)
    apply_freeswim(model, cfg)
    try:
        out = forward(model, inputs)
        st = attnplug.stats(model)
    finally:
        remove_freeswim(model)
    assert st["method: cross-attention"] == 2 * len(dense_cross)  # full branch + override
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    plain = windowed_with_cross(model, inputs, cfg.window, {})  # no override: differs
    assert not torch.allclose(out, plain, atol=1e-4)


def test_cache_reused_between_refreshes():
    """refresh_every=2: step 0 refreshes, step 1 reuses step 0's full-branch cross-attention outputs."""
    model, inputs0 = wan(500)
    _, inputs1 = wan(400)
    inputs1["hidden_states"] = inputs0["hidden_states"] * 0.9 + 0.1 * torch.randn_like(inputs0["hidden_states"])
    cfg = FreeSwimConfig(train_grid=(4, 4), refresh_every=2)
    cross0 = record_cross(model, inputs0)
    ref1 = windowed_with_cross(model, inputs1, cfg.window, cross0)
    apply_freeswim(model, cfg)
    try:
        forward(model, inputs0)
        n_step0 = attnplug.stats(model)["method: cross-attention"]  # full branch + override
        out1 = forward(model, inputs1)
        st = attnplug.stats(model)
    finally:
        remove_freeswim(model)
    assert st["method: cross-attention"] - n_step0 == n_step0 // 2  # step 1: overrides only, no full branch
    torch.testing.assert_close(out1, ref1, atol=1e-5, rtol=1e-5)
    assert "forward" not in model.__dict__


def test_window_covering_grid_equals_dense():
    model, inputs = wan()
    dense = forward(model, inputs)
    with attnplug.applied(model, FreeSwimConfig(train_grid=(10, 10))):
        enable_dual_path(model)
        out = forward(model, inputs)
        assert attnplug.stats(model)["method"] > 0
        disable_dual_path(model)
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["cogvideox", "pixart"])
def test_other_families_window_only(family):
    model, inputs = tiny_model(family, height=16, width=16, frames=3, text=5)
    dense = forward(model, inputs)
    apply_freeswim(model, FreeSwimConfig(train_grid=(3, 3)))
    try:
        out = forward(model, inputs)
        st = attnplug.stats(model)
    finally:
        remove_freeswim(model)
    assert st["method"] > 0 and torch.isfinite(out).all() and not torch.allclose(out, dense, atol=1e-5)


def test_enable_requires_freeswim():
    model, _ = wan()
    with pytest.raises(ValueError, match="no FreeSwim method applied"):
        enable_dual_path(model)
    with pytest.raises(TypeError, match="FreeSwimConfig"):
        FreeSwimProcessor(attnplug.DenseConfig())


def test_plain_apply_sets_up_dual_path_and_keeps_existing_forward_override():
    model, inputs = wan()
    marker = model.forward  # e.g. accelerate's offload hook stores its forward in the instance dict
    model.forward = marker
    attnplug.apply(model, FreeSwimConfig(train_grid=(4, 4)))
    assert model.__dict__["forward"] is not marker
    forward(model, inputs)
    assert attnplug.stats(model)["method: cross-attention"] > 0
    attnplug.remove(model)
    assert model.__dict__["forward"] is marker
