"""One applied model serves one call at a time: a second thread calling it while a call runs is refused with a
clear error, a finished or failed call leaves it free for any thread, and a deep copy runs beside its original."""

import threading

import pytest
import torch.nn.functional as F

import attnplug
from attnplug.methods.base import AttentionMethod
from attnplug.processors.guard import ConcurrentCallError
from attnplug.testing import forward, tiny_model


class Blocking(AttentionMethod):
    """Exact attention that, on the thread named ``holder``, waits inside its first call until released."""

    supports_mask = True

    def __init__(self):
        self.inside, self.release = threading.Event(), threading.Event()

    def __call__(self, q, k, v, layout, mask=None, info=None):
        if threading.current_thread().name == "holder" and not self.inside.is_set():
            self.inside.set()
            self.release.wait(30)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _in_thread(name, fn) -> dict:
    """Run ``fn`` on a thread named ``name``; returns ``{"thread", "error"}`` (error filled in when it raised)."""
    result = {}

    def target():
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - handed to the test
            result["error"] = e

    result["thread"] = threading.Thread(target=target, name=name)
    result["thread"].start()
    return result


@pytest.mark.parametrize("family", ["wan", "unet"])
def test_a_second_thread_is_refused_while_a_call_runs(family):
    model, inputs = tiny_model(family)
    stock = forward(model, inputs)
    method = Blocking()
    attnplug.apply(model, method)
    holder = _in_thread("holder", lambda: forward(model, inputs))
    assert method.inside.wait(30)
    second = _in_thread("second", lambda: forward(model, inputs))
    second["thread"].join(30)
    method.release.set()
    holder["thread"].join(30)
    assert "error" not in holder
    error = second.get("error")
    assert isinstance(error, ConcurrentCallError), error
    assert "'holder'" in str(error) and "'second'" in str(error) and "one call at a time" in str(error)
    # the call is over: any thread may call now, and gets the stock result (the method is exact)
    out = []
    third = _in_thread("third", lambda: out.append(forward(model, inputs)))
    third["thread"].join(30)
    assert "error" not in third and (out[0] - stock).abs().max() < 1e-5
    attnplug.remove(model)


def test_a_failed_call_does_not_hold_the_model():
    class Failing(AttentionMethod):
        def __call__(self, q, k, v, layout, mask=None, info=None):
            if threading.current_thread().name == "failing":
                raise RuntimeError("boom")
            return F.scaled_dot_product_attention(q, k, v)

    model, inputs = tiny_model("wan")
    attnplug.apply(model, Failing())
    failing = _in_thread("failing", lambda: forward(model, inputs))
    failing["thread"].join(30)
    assert str(failing.get("error")) == "boom"
    other = _in_thread("other", lambda: forward(model, inputs))
    other["thread"].join(30)
    assert "error" not in other
    attnplug.remove(model)


def test_calls_from_one_thread_after_another_are_fine():
    model, inputs = tiny_model("pixart")
    attnplug.apply(model, "dense")
    for name in ("a", "b", "c"):
        run = _in_thread(name, lambda: forward(model, inputs))
        run["thread"].join(30)
        assert "error" not in run
    attnplug.remove(model)
