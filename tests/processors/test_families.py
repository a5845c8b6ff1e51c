"""Dense through attnplug reproduces stock output on every family; remove() is exact; every selected attention call
is intercepted; the stock processors are never replaced."""

import inspect

import pytest
import torch

import attnplug
from attnplug.plugin import attention_modules
from attnplug.testing import FAMILY_NAMES, forward, tiny_model


def _count_attention_calls(model, inputs) -> tuple[int, int]:
    """(self-attention calls, cross-attention calls) of one forward, counted on the stock model."""
    from attnplug.families import family_of
    from attnplug.plugin import is_cross_attention_module

    calls = {"self": 0, "cross": 0}
    handles = []
    excluded = family_of(model).exclude_modules  # e.g. HunyuanVideo's text refiner never sees the image grid
    for name, module in attention_modules(model):
        if any(part in name for part in excluded):
            continue
        kind = "cross" if is_cross_attention_module(name, module) else "self"
        handles.append(module.register_forward_pre_hook(lambda *a, kind=kind: calls.__setitem__(kind,
                                                                                                 calls[kind] + 1)))
    try:
        forward(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return calls["self"], calls["cross"]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_dense_matches_stock_and_remove_is_exact(family):
    model, inputs = tiny_model(family)
    stock = forward(model, inputs)
    processors = {n: m.processor for n, m in attention_modules(model)}
    n_self, n_cross = _count_attention_calls(model, inputs)

    attnplug.apply(model, attnplug.DenseConfig())
    assert {n: m.processor for n, m in attention_modules(model)} == processors  # nothing replaced
    out = forward(model, inputs)
    stats = attnplug.stats(model)
    torch.testing.assert_close(out, stock, atol=1e-5, rtol=1e-5)
    assert stats["self"]["calls"] == stats["self"]["method"] == n_self > 0, stats
    assert stats["cross"]["calls"] == stats["cross"]["stock"] == n_cross, stats
    assert stats["passthrough"] == 0

    attnplug.remove(model)
    assert torch.equal(forward(model, inputs), stock)
    assert attnplug.stats(model) == {}
    assert not any(hasattr(m, "_diffusers_hook") for m in model.modules())  # no registry left behind
    assert not any("forward" in m.__dict__ for m in model.modules())  # nor a forward bound to an instance


@pytest.mark.parametrize("family", ["flux", "wan", "hunyuanvideo", "cogvideox"])
def test_stock_processor_and_signature_untouched(family):
    model, _ = tiny_model(family)
    before = {n: (m.processor, inspect.signature(m.processor.__call__)) for n, m in attention_modules(model)}
    attnplug.apply(model, attnplug.NeighborhoodConfig(kernel_size=3))
    after = {n: (m.processor, inspect.signature(m.processor.__call__)) for n, m in attention_modules(model)}
    assert before == after


def test_apply_is_idempotent_and_remove_noop():
    model, inputs = tiny_model("pixart")
    attnplug.remove(model)  # no-op when not applied
    attnplug.apply(model)
    attnplug.apply(model)
    forward(model, inputs)
    n_calls = attnplug.stats(model)["self"]["calls"]
    assert n_calls == 2  # two self-attention layers, one forward: no double hooks
    attnplug.remove(model)
    attnplug.remove(model)
    assert not any(hasattr(m, "_diffusers_hook") for m in model.modules())


def test_applied_context_manager_restores_even_when_the_body_raises():
    model, inputs = tiny_model("sd3")
    stock = forward(model, inputs)
    with attnplug.applied(model, attnplug.DenseConfig()) as m:
        assert m is model
        assert attnplug.stats(model)["self"]["calls"] == 0
        forward(model, inputs)
        assert attnplug.stats(model)["self"]["calls"] > 0
    assert torch.equal(forward(model, inputs), stock)
    with pytest.raises(RuntimeError, match="boom"), attnplug.applied(model, "neighborhood", kernel_size=3):
        raise RuntimeError("boom")
    assert attnplug.method_of(model) is None
    assert torch.equal(forward(model, inputs), stock)
