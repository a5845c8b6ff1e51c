"""FreeSwim: windowed self-attention sized to the training grid, and the dual path (full-branch cross-attention
override with a refresh period) run by the method's model hook.

The reference for the override is built without attnplug's interception: forward hooks on the cross-attention
modules (``attn2``) record the outputs of a dense run and substitute them into a windowed run.
"""

from __future__ import annotations

import ast
import inspect
import logging

import pytest
import torch
from diffusers.hooks import HookRegistry

import attnplug
from attnplug._logging import log_scope
from attnplug._steps import DenoisingSteps
from attnplug.kernels.neighborhood import neighborhood_attention
from attnplug.layout import TokenLayout
from attnplug.methods import freeswim
from attnplug.methods.base import CallInfo
from attnplug.methods.freeswim import FreeSwimConfig, FreeSwimHook, FreeSwimMethod, window_for
from attnplug.methods.neighborhood import NeighborhoodConfig
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


def windowed_with_cross(model, inputs, kernel, cross: dict):
    """Windowed run (attnplug neighbourhood, ``kernel``) whose attn2 outputs are replaced by ``cross``."""
    handles = [mod.register_forward_hook(lambda m, a, o, name=name: cross.get(name))
               for name, mod in cross_modules(model)]
    try:
        with attnplug.applied(model, NeighborhoodConfig(kernel_size=kernel)):
            return forward(model, inputs)
    finally:
        for h in handles:
            h.remove()


def wan(timestep=500, seed=0):
    model, inputs = tiny_model("wan", height=20, width=20, frames=3, text=5, seed=seed)  # token grid (3, 10, 10)
    inputs["timestep"] = torch.tensor([timestep] * 2)
    return model, inputs


def _qkv(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, 2, layout.num_tokens, 8, generator=g) for _ in range(3))


def _report(model) -> dict:
    return attnplug.stats(model)["method_report"]


# ----------------------------------------------------------------------------------------------------
# Config and window sizing


def test_config():
    assert FreeSwimConfig().train_grid is None  # the model's own training grid unless given
    assert FreeSwimConfig(train_grid=(6, 8)).train_grid == (None, 6, 8)
    assert FreeSwimConfig(train_grid=16).train_grid == (None, 16, 16)  # an int covers height and width
    assert FreeSwimConfig(train_grid=(3, 6, 8)).train_grid == (3, 6, 8)
    with pytest.raises(ValueError, match="train_grid must be"):
        FreeSwimConfig(train_grid=(1, 2, 3, 4))
    with pytest.raises(ValueError, match="train_grid for width must be >= 1"):
        FreeSwimConfig(train_grid=(6, 0))
    with pytest.raises(ValueError, match="refresh_every must be in"):
        FreeSwimConfig(refresh_every=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        FreeSwimConfig(backend="gpu")


def test_window_rule():
    assert window_for((None, 6, 8), (2, 9, 11)) == (None, 7, 9)  # rounded up to odd
    assert window_for((None, 16, 16), (1, 16, 16)) is None  # covers the grid
    assert window_for((None, 16, 16), (1, 32, 12)) == (None, 17, 17)  # covers the width only: still windowed
    assert window_for((3, 6, 6), (8, 6, 6)) == (3, 7, 7)


def test_window_branch_is_inward_sliding_window():
    layout = TokenLayout(2, 9, 11)
    q, k, v = _qkv(layout)
    out = FreeSwimMethod(FreeSwimConfig(train_grid=(4, 6)))(q, k, v, layout)
    ref = neighborhood_attention(q, k, v, (None, 5, 7), layout=layout, backend="reference")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_window_sized_from_the_model_training_grid():
    """F12: without a configured grid the window is the model's training grid at this call's level."""
    layout = TokenLayout(1, 20, 20)
    q, k, v = _qkv(layout)
    method = FreeSwimMethod(FreeSwimConfig())
    out = method(q, k, v, layout, info=CallInfo(latent_grid=(1, 20, 20), train_grid=(1, 8, 8)))
    ref = neighborhood_attention(q, k, v, (None, 9, 9), layout=layout, backend="reference")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # A configured grid wins over the model's.
    out = FreeSwimMethod(FreeSwimConfig(train_grid=(4, 4)))(q, k, v, layout, info=CallInfo(train_grid=(1, 8, 8)))
    torch.testing.assert_close(out, neighborhood_attention(q, k, v, (None, 5, 5), layout=layout,
                                                           backend="reference"), atol=1e-5, rtol=0)


def test_configured_grid_scales_with_the_unet_level():
    """A configured grid is in latent tokens: a layer at half the latent grid gets half the window."""
    layout = TokenLayout(1, 12, 12)
    q, k, v = _qkv(layout)
    out = FreeSwimMethod(FreeSwimConfig(train_grid=(16, 16)))(q, k, v, layout,
                                                              info=CallInfo(latent_grid=(1, 24, 24), level=1))
    ref = neighborhood_attention(q, k, v, (None, 9, 9), layout=layout, backend="reference")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_window_covering_the_grid_hands_back():
    """F12: at (or below) the training resolution the window covers the grid: the call is handed back, not run as
    a 'method' call that is dense attention anyway."""
    layout = TokenLayout(1, 16, 16)
    q, k, v = _qkv(layout)
    method = FreeSwimMethod(FreeSwimConfig())
    assert method(q, k, v, layout, info=CallInfo(train_grid=(1, 16, 16))) is None
    assert method.last_reason() == "window-covers-grid"
    assert method.report()["self: window covers the grid (stock)"] == 1


def test_unknown_training_grid_hands_back_with_a_warning(caplog):
    layout = TokenLayout(1, 16, 16)
    q, k, v = _qkv(layout)
    method = FreeSwimMethod(FreeSwimConfig())
    with caplog.at_level(logging.WARNING, logger="attnplug"), log_scope():
        assert method(q, k, v, layout, info=CallInfo()) is None
    assert method.last_reason() == "train-grid-unknown"
    assert "training grid is unknown" in caplog.text


# ----------------------------------------------------------------------------------------------------
# Cross-attention cache


def test_cross_hook_caches_per_pass_layer_and_call():
    method = FreeSwimMethod(FreeSwimConfig(train_grid=(4, 4)))
    q, k, v = torch.randn(3, 1, 2, 16, 8).unbind(0)
    info = CallInfo(layer_name="blocks.0.attn2")

    def denoiser_pass(branch, *calls):
        """One denoiser pass of ``branch``: the cross-attention calls ``(q, k, v, info)`` in order."""
        method._state.branch = branch
        method._state.calls_in_layer.clear()
        return [method.cross_attention(q_, k_, v_, None, info_) for q_, k_, v_, info_ in calls]

    assert denoiser_pass("window", (q, k[:, :, :5], v[:, :, :5], info)) == [None]  # nothing cached yet
    text, image = (q, k[:, :, :5], v[:, :, :5], info), (q, k[:, :, 5:9], v[:, :, 5:9], info)  # two calls, one layer
    full = denoiser_pass("full", text, image)
    window = denoiser_pass("window", (q * 0, *text[1:]), (q * 0, *image[1:]))
    assert torch.equal(window[0], full[0]) and torch.equal(window[1], full[1])
    assert not torch.equal(full[0], full[1])
    assert denoiser_pass("window", (q, k, v, CallInfo(layer_name="other"))) == [None]
    method._state.pass_index = 1
    assert denoiser_pass("window", text) == [None]
    method.reset()
    method._state.pass_index = 0
    assert denoiser_pass("window", text) == [None]


def test_guidance_passes_are_bounded():
    method = FreeSwimMethod(FreeSwimConfig(train_grid=(4, 4)))
    steps = DenoisingSteps()
    for _ in range(10):
        steps.observe(500.0)  # the same timestep again and again: one step, ten passes
        method.run(lambda: None, steps, (), {})
    assert steps.step == 0 and steps.pass_index == 9
    assert method._state.pass_index == freeswim.MAX_PASSES - 1


# ----------------------------------------------------------------------------------------------------
# The dual path through the model hook


def test_model_hook_is_a_diffusers_hook_and_the_module_imports_no_plugin():
    assert isinstance(FreeSwimMethod(FreeSwimConfig()).model_hook(), FreeSwimHook)
    assert FreeSwimMethod(FreeSwimConfig(override_cross_attention=False)).model_hook() is None
    tree = ast.parse(inspect.getsource(freeswim))
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.split(".")[0] in ("plugin", "processors") for name in imported), imported
    for name in ("apply_freeswim", "remove_freeswim", "enable_dual_path", "FreeSwimProcessor"):
        assert not hasattr(freeswim, name)


def test_dual_path_equals_override_reference():
    """One refresh step: output == windowed run with attn2 outputs replaced by a dense run's."""
    model, inputs = wan()
    cfg = FreeSwimConfig(train_grid=(4, 4), refresh_every=1)
    dense_cross = record_cross(model, inputs)
    ref = windowed_with_cross(model, inputs, (None, 5, 5), dense_cross)
    with attnplug.applied(model, cfg):
        assert HookRegistry.check_if_exists_or_initialize(model).get_hook("attnplug.method") is not None
        out = forward(model, inputs)
        report, st = _report(model), attnplug.stats(model)
    assert HookRegistry.check_if_exists_or_initialize(model).get_hook("attnplug.method") is None
    n = len(dense_cross)
    assert report["full branches"] == 1
    assert report["cross: cached by the full branch"] == n and report["cross: overridden"] == n
    assert report["self: windowed"] == st["self"]["method"] > 0
    assert st["self"]["reasons"].get("freeswim-full-branch") == report["self: full branch (stock)"] > 0
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    plain = windowed_with_cross(model, inputs, (None, 5, 5), {})  # no override: differs
    assert not torch.allclose(out, plain, atol=1e-4)


def test_cache_reused_between_refreshes():
    """refresh_every=2: step 0 refreshes, step 1 reuses step 0's full-branch cross-attention outputs."""
    model, inputs0 = wan(500)
    _, inputs1 = wan(400)
    inputs1["hidden_states"] = inputs0["hidden_states"] * 0.9 + 0.1 * torch.randn_like(inputs0["hidden_states"])
    cfg = FreeSwimConfig(train_grid=(4, 4), refresh_every=2)
    cross0 = record_cross(model, inputs0)
    ref1 = windowed_with_cross(model, inputs1, (None, 5, 5), cross0)
    with attnplug.applied(model, cfg):
        forward(model, inputs0)
        out1 = forward(model, inputs1)
        report = _report(model)
    assert report["full branches"] == 1  # step 1 ran the windowed branch only
    assert report["cross: overridden"] == 2 * len(cross0)
    torch.testing.assert_close(out1, ref1, atol=1e-5, rtol=1e-5)


def test_covering_window_runs_one_pass_and_equals_stock():
    """F12: at the training resolution nothing is windowed: one denoiser pass (no dual path), stock output, and the
    counters say so."""
    model, inputs = wan()
    dense = forward(model, inputs)
    passes = []
    handle = model.blocks[0].register_forward_hook(lambda *a: passes.append(1))
    try:
        with attnplug.applied(model, FreeSwimConfig(train_grid=(10, 10))):
            out = forward(model, inputs)
            passes_before_second_step = len(passes)
            forward(model, {**inputs, "timestep": torch.tensor([400] * 2)})
            st, report = attnplug.stats(model), _report(model)
    finally:
        handle.remove()
    assert passes_before_second_step == 1 and len(passes) == 2
    assert st["self"]["method"] == 0 and st["self"]["reasons"].get("window-covers-grid", 0) > 0, st
    assert report["windowed branches skipped (nothing to window)"] == 1
    assert "cross: overridden" not in report  # the skipped full branch's cache does not override step 1
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-5)


def test_training_grid_from_the_model_at_twice_its_size():
    """PixArt trained at 16x16 latents (8x8 tokens), run at 32x32: 9x9 windows on every layer, and the dual path."""
    model, _ = tiny_model("pixart", height=16, width=16)
    _, inputs = tiny_model("pixart", height=32, width=32)
    dense = forward(model, inputs)
    with attnplug.applied(model, FreeSwimConfig()):
        out = forward(model, inputs)
        st, report = attnplug.stats(model), _report(model)
    assert st["self"]["method"] == report["self: windowed"] > 0, (st, report)
    assert report["full branches"] == 1 and report["cross: overridden"] > 0
    assert torch.isfinite(out).all() and not torch.allclose(out, dense, atol=1e-5)
    _, small = tiny_model("pixart", height=16, width=16)  # at its training size: stock, one pass
    with attnplug.applied(model, FreeSwimConfig()):
        torch.testing.assert_close(forward(model, small), forward(model, small), atol=0, rtol=0)
        assert attnplug.stats(model)["self"]["method"] == 0


def test_joint_attention_family_windows_only():
    """CogVideoX has no separate cross-attention: after the first full branch finds none, it is not run again."""
    model, inputs = tiny_model("cogvideox", height=16, width=16, frames=3, text=5)
    dense = forward(model, inputs)
    with attnplug.applied(model, FreeSwimConfig(train_grid=(3, 3), refresh_every=1)):
        forward(model, inputs)
        out = forward(model, {**inputs, "timestep": inputs["timestep"] - 100})
        st, report = attnplug.stats(model), _report(model)
    assert report["full branches"] == 1 and st["self"]["method"] > 0
    assert torch.isfinite(out).all() and not torch.allclose(out, dense, atol=1e-5)


def test_standalone_processor_windows_only(caplog):
    """The standalone processor runs the windowed branch only: what apply gives without the cross-attention
    override."""
    model, inputs = tiny_model("pixart", height=16, width=16)
    with attnplug.applied(model, FreeSwimConfig(train_grid=(3, 3), override_cross_attention=False)):
        expected = forward(model, inputs)
        assert attnplug.stats(model)["self"]["method"] > 0
    model.set_attn_processor(attnplug.AttnplugProcessor(FreeSwimConfig(train_grid=(3, 3))))
    with caplog.at_level(logging.WARNING, logger="attnplug"), log_scope():
        out = forward(model, inputs)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert "only the windowed self-attention is active" in caplog.text


def _with_ip_adapter(model, inputs, tokens=4, seed=1):
    """``model``'s cross-attention modules get ``IPAdapterAttnProcessor2_0`` (random image-prompt projections: two
    SDPA calls per module, text then image), and ``inputs`` image-prompt tokens ``(B, tokens, cross dim)`` passed
    the way diffusers' pipelines pass them (a ``(text, [image])`` tuple)."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    torch.manual_seed(seed)
    text = inputs["encoder_hidden_states"]
    for _, mod in cross_modules(model):
        proc = IPAdapterAttnProcessor2_0(mod.to_q.out_features, text.shape[-1], num_tokens=(tokens,), scale=0.7)
        mod.set_processor(proc.to(text.dtype))
    image = torch.randn(text.shape[0], tokens, text.shape[-1])
    return dict(inputs, encoder_hidden_states=(text, [image]))


def test_dual_path_with_an_ip_adapter_overrides_each_attention_call_of_a_layer():
    """IP-adapter cross-attention makes two SDPA calls per layer: each is replaced by its own full-branch output."""
    model, inputs = tiny_model("unet", height=16, width=16, text=5)
    inputs = _with_ip_adapter(model, inputs)
    dense_cross = record_cross(model, inputs)
    # train grid 15 at the 16 x 16 latent: the finest level windows (15 x 15), the 8 x 8 level stays stock
    ref = windowed_with_cross(model, inputs, (15, 15), dense_cross)
    with attnplug.applied(model, FreeSwimConfig(train_grid=15, refresh_every=1)):
        out = forward(model, inputs)
        report = _report(model)
    n = len(dense_cross)
    assert report["cross: cached by the full branch"] == 2 * n and report["cross: overridden"] == 2 * n
    assert report["self: windowed"] > 0
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
