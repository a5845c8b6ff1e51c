"""Whether cross-attention calls are intercepted is asked of the method: a wrapper answers for its inner method."""

import pytest
import torch
import torch.nn.functional as F

import attnplug
from attnplug.methods.base import AttentionMethod, MethodWrapper
from attnplug.processors.core import Interception, intercepts_cross
from attnplug.testing import forward, tiny_model


class SelfOnly(AttentionMethod):
    def __call__(self, q, k, v, layout, mask=None, info=None):
        return F.scaled_dot_product_attention(q, k, v)


class WithCross(SelfOnly):
    def __init__(self):
        self.cross_calls = 0

    def cross_attention(self, q, k, v, mask, info):
        self.cross_calls += 1
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Passing(MethodWrapper):
    """A wrapper of its own ``__call__`` only: the rest of the protocol is the inner method's."""

    def __call__(self, q, k, v, layout, mask=None, info=None):
        return self.inner(q, k, v, layout, mask, info)


class OwnCross(Passing):
    def cross_attention(self, q, k, v, mask, info):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_the_method_answers():
    assert not intercepts_cross(SelfOnly())
    assert intercepts_cross(WithCross())
    assert not intercepts_cross(Passing(SelfOnly()))
    assert not intercepts_cross(Passing())
    assert intercepts_cross(Passing(WithCross()))
    assert intercepts_cross(Passing(Passing(WithCross())))
    assert intercepts_cross(OwnCross(SelfOnly()))


def _attended(monkeypatch) -> list:
    calls = []
    original = Interception.attend

    def counted(self, site, *args, **kwargs):
        calls.append(site.is_cross)
        return original(self, site, *args, **kwargs)

    monkeypatch.setattr(Interception, "attend", counted)
    return calls


def test_a_wrapper_of_a_self_attention_method_leaves_cross_attention_stock(monkeypatch):
    calls = _attended(monkeypatch)
    model, inputs = tiny_model("pixart")  # 2 self- and 2 cross-attention modules
    attnplug.apply(model, Passing(SelfOnly()))
    forward(model, inputs)
    st = attnplug.stats(model)
    assert st["self"]["method"] == 2 and st["cross"] == {"calls": 2, "method": 0, "stock": 2,
                                                         "reasons": {"cross-attention": 2}}
    assert calls == [False, False]  # the cross-attention modules ran their stock forward, never intercepted
    attnplug.remove(model)


def test_a_wrapper_of_a_cross_attention_method_intercepts_it(monkeypatch):
    calls = _attended(monkeypatch)
    inner = WithCross()
    model, inputs = tiny_model("pixart")
    attnplug.apply(model, Passing(inner))
    forward(model, inputs)
    assert inner.cross_calls == 2 and attnplug.stats(model)["cross"]["method"] == 2
    assert sorted(calls) == [False, False, True, True]
    attnplug.remove(model)


@pytest.mark.parametrize("form", ["bool", "additive"])
def test_freeswim_reads_a_2d_prompt_mask_as_diffusers_native_backend_does(form):
    """Kandinsky 6 hands dispatch_attention_fn a (B, N_text) mask, which diffusers' native backend reshapes to
    (B, 1, 1, N_text) before SDPA: FreeSwim's full branch caches exactly that output."""
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    from attnplug.methods.base import CallInfo
    from attnplug.methods.freeswim import FreeSwimMethod

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 12, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    mask = keep if form == "bool" else torch.zeros(2, 5).masked_fill(~keep, float("-inf"))
    method = FreeSwimMethod()
    method._state.branch = "full"
    out = method.cross_attention(q, k, v, mask, CallInfo(layer_name="blocks.0.cross_attention"))
    stock = dispatch_attention_fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                  backend=AttentionBackendName.NATIVE).transpose(1, 2)
    assert torch.equal(out, stock)
    method._state.branch = "window"  # the windowed branch returns the cached output of the same call
    method._state.calls_in_layer.clear()
    assert torch.equal(method.cross_attention(q, k, v, mask, CallInfo(layer_name="blocks.0.cross_attention")), out)
