"""Dense processors reproduce stock output on every family; remove() is exact; every attention call is intercepted."""

import pytest
import torch

import attnplug
from attnplug.plugin import attention_modules
from attnplug.testing import FAMILY_NAMES, forward, tiny_model


def _count_attention_calls(model, inputs) -> int:
    calls = []
    handles = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for _, m in attention_modules(model)]
    try:
        forward(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return len(calls)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_dense_matches_stock_and_remove_is_exact(family):
    model, inputs = tiny_model(family)
    stock = forward(model, inputs)
    n_calls = _count_attention_calls(model, inputs)

    attnplug.apply(model, attnplug.DenseConfig())
    out = forward(model, inputs)
    stats = attnplug.stats(model)
    torch.testing.assert_close(out, stock, atol=1e-5, rtol=1e-5)
    assert stats["calls"] == n_calls > 0, stats  # no silent pass-through
    assert stats.get("passthrough", 0) == 0
    assert stats.get("method", 0) > 0

    attnplug.remove(model)
    assert torch.equal(forward(model, inputs), stock)
    assert attnplug.stats(model) == {}
    assert not any(isinstance(m.processor, attnplug.AttnplugProcessor) for _, m in attention_modules(model))


@pytest.mark.parametrize("family", ["flux", "wan", "hunyuanvideo", "cogvideox"])
def test_wrapper_exposes_stock_signature(family):
    """diffusers passes a processor only the kwargs its signature declares (RoPE would be dropped otherwise)."""
    import inspect

    model, _ = tiny_model(family)
    stock = {n: inspect.signature(m.processor.__call__).parameters.keys() for n, m in attention_modules(model)}
    attnplug.apply(model)
    for name, module in attention_modules(model):
        assert list(inspect.signature(module.processor.__call__).parameters.keys()) == list(stock[name])


def test_apply_is_idempotent_and_remove_noop():
    model, inputs = tiny_model("pixart")
    attnplug.remove(model)  # no-op when not applied
    attnplug.apply(model)
    attnplug.apply(model)
    wrapped = [m.processor for _, m in attention_modules(model)]
    assert all(isinstance(p, attnplug.AttnplugProcessor) for p in wrapped)
    assert not any(isinstance(p.stock, attnplug.AttnplugProcessor) for p in wrapped)  # no double wrapping
    attnplug.remove(model)
    attnplug.remove(model)
    assert not any(isinstance(m.processor, attnplug.AttnplugProcessor) for _, m in attention_modules(model))


def test_applied_context_manager_restores():
    model, inputs = tiny_model("sd3")
    stock = forward(model, inputs)
    with attnplug.applied(model, attnplug.DenseConfig()) as m:
        assert m is model
        assert attnplug.stats(model) == {}
        forward(model, inputs)
        assert attnplug.stats(model)["calls"] > 0
    assert torch.equal(forward(model, inputs), stock)
