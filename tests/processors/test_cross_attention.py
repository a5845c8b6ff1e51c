"""Whether cross-attention calls are intercepted is asked of the method: a wrapper answers for its inner method."""

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
