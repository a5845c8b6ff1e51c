"""The per-call path: eager calls are caught at the one name each processor calls (no function mode sees their
ops), the layout is built once per grid, and remove binds diffusers' own names again."""

import importlib

import pytest
import torch

import attnplug
from attnplug.layout import LayoutState
from attnplug.processors.intercept import SDPAInterceptor
from attnplug.testing import forward, tiny_model

# family -> (module its processor is defined in, the name it reaches attention through)
ROUTED = {
    "unet": ("diffusers.models.attention_processor", "F"),
    "pixart": ("diffusers.models.attention_processor", "F"),
    "wan": ("diffusers.models.transformers.transformer_wan", "dispatch_attention_fn"),
    "flux": ("diffusers.models.transformers.transformer_flux", "dispatch_attention_fn"),
}


def _bound(family):
    module, name = ROUTED[family]
    return getattr(importlib.import_module(module), name)


def _diffusers_own(family):
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    return torch.nn.functional if ROUTED[family][1] == "F" else dispatch_attention_fn


@pytest.mark.parametrize("family", list(ROUTED))
def test_eager_calls_are_caught_without_the_function_mode(family, monkeypatch, tagged):
    seen = []
    original = SDPAInterceptor.__torch_function__

    def counted(self, func, types, args=(), kwargs=None):
        seen.append(func)
        return original(self, func, types, args, kwargs)

    monkeypatch.setattr(SDPAInterceptor, "__torch_function__", counted)
    model, inputs = tiny_model(family)
    stock = forward(model, inputs)
    attnplug.apply(model, tagged)
    out = forward(model, inputs)
    torch.testing.assert_close(out, stock, atol=1e-5, rtol=1e-5)
    st = attnplug.stats(model)["self"]
    assert st["method"] == st["calls"] == len(tagged.calls) > 0
    assert seen == []  # not one op went through the mode
    attnplug.remove(model)


_REMOVE_SCRIPT = """
import importlib, sys
import torch
import attnplug
from attnplug.processors import route
from attnplug.testing import forward, tiny_model
family, module, name = sys.argv[1:4]
from diffusers.models.attention_dispatch import dispatch_attention_fn
original = torch.nn.functional if name == "F" else dispatch_attention_fn
bound = lambda: getattr(importlib.import_module(module), name)
a, inputs = tiny_model(family)
b, _ = tiny_model(family)
attnplug.apply(a, "dense")
attnplug.apply(b, "dense")
forward(a, inputs), forward(b, inputs)
assert bound() is not original and (module, name) in route.routed_names(), "not routed"
attnplug.remove(a)
assert bound() is not original, "unrouted while b still uses it"
assert forward(b, inputs).isfinite().all()
attnplug.remove(b)
assert bound() is original and (module, name) not in route.routed_names(), "not bound back"
"""


@pytest.mark.parametrize("family", list(ROUTED))
def test_remove_binds_the_original_name_again(family):
    """In a fresh interpreter: models left applied by other tests in this process would hold the routes."""
    import subprocess
    import sys

    module, name = ROUTED[family]
    done = subprocess.run([sys.executable, "-c", _REMOVE_SCRIPT, family, module, name], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_stock_model_beside_an_applied_one_runs_stock(tagged):
    applied, inputs = tiny_model("wan")
    other, _ = tiny_model("wan", seed=1)
    expected = forward(other, inputs)
    attnplug.apply(applied, tagged)
    forward(applied, inputs)
    n = len(tagged.calls)
    torch.testing.assert_close(forward(other, inputs), expected)  # through the router, untouched
    assert len(tagged.calls) == n
    attnplug.remove(applied)


@pytest.mark.parametrize("family", ["unet", "flux"])
def test_the_layout_is_built_once_per_grid(family, monkeypatch):
    built = []
    original = LayoutState.layout_for

    def counted(self, n, *args, **kwargs):
        built.append(n)
        return original(self, n, *args, **kwargs)

    monkeypatch.setattr(LayoutState, "layout_for", counted)
    model, inputs = tiny_model(family)
    attnplug.apply(model, "dense")
    for _ in range(3):
        forward(model, inputs)
    calls = attnplug.stats(model)["self"]["method"]
    assert calls == 3 * (calls // 3) > 0
    assert sorted(built) == sorted(set(built))  # one per sequence length (U-Net levels), not one per call
    before = len(built)
    _, bigger = tiny_model(family, height=32, width=32)
    forward(model, bigger)  # a new grid: its layouts are built, once
    after = len(built)
    forward(model, bigger)
    assert after > before and len(built) == after
    attnplug.remove(model)


_CYCLES_SCRIPT = """
import gc, random
import attnplug
from attnplug.processors.intercept import SDPAInterceptor
from attnplug.testing import forward, tiny_model
seen = []
original = SDPAInterceptor.__torch_function__
def counted(self, func, types, args=(), kwargs=None):
    seen.append(func)
    return original(self, func, types, args, kwargs)
SDPAInterceptor.__torch_function__ = counted
rng, live, mode_calls, checked = random.Random(0), [], 0, 0
for _ in range(16):
    op = rng.random()
    if op < 0.55 or not live:
        family = rng.choice(["unet", "pixart", "wan", "flux"])
        model, inputs = tiny_model(family)
        attnplug.apply(model, "dense")
        live.append((model, inputs))
    elif op < 0.8:
        attnplug.remove(live.pop(rng.randrange(len(live)))[0])
    else:
        live.pop(rng.randrange(len(live)))  # dropped without remove
        gc.collect()
    for model, inputs in live:
        seen.clear()
        forward(model, inputs)
        mode_calls += len(seen)
        checked += 1
assert mode_calls == 0 and checked > 16, (mode_calls, checked)
"""


def test_routing_stays_active_across_apply_remove_and_dropped_models():
    """A long-lived process (a UI server, a notebook): models applied, removed and dropped without remove in any
    order; every eager call of every applied model is still caught at its routed name, never by the function mode."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _CYCLES_SCRIPT], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
