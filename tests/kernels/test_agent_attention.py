"""Agent attention kernel: the fast path against the float64 reference; the reference against dense attention where
the two coincide; the log-sum-exp merge; no N x N tensor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnplug.kernels.agent import agent_attention, agent_attention_reference, gather_with_lse
from attnplug.kernels.merge import merge_attentions

ATOL = 1e-5


@pytest.fixture
def gather_path():
    """The gather path: chunked matmuls with their log-sum-exp (PyTorch's CPU flash op is not used: it gave
    non-finite rows now and then on small head dims)."""
    return "chunked"


def _inputs(dim, seed, b=2, h=2, n=37, na=6, t=9, with_text=False, with_mask=False):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, dim, generator=g) for _ in range(3))
    agents = torch.randn(b, h, na, dim, generator=g)
    tk, tv = (torch.randn(b, h, t, dim, generator=g) for _ in range(2)) if with_text else (None, None)
    key_bias = text_bias = None
    if with_mask:
        key_bias = torch.zeros(b, 1, 1, n).masked_fill(torch.rand(b, 1, 1, n, generator=g) < 0.2, -torch.inf)
        if with_text:
            text_bias = torch.zeros(b, 1, 1, t)
            text_bias[1, ..., -3:] = -torch.inf
    return q, k, v, agents, tk, tv, key_bias, text_bias


@pytest.mark.parametrize("dim", [40, 64, 80])
@pytest.mark.parametrize("with_text", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_fast_path_matches_reference(dim, with_text, with_mask, gather_path):
    q, k, v, agents, tk, tv, key_bias, text_bias = _inputs(dim, dim, with_text=with_text, with_mask=with_mask)
    sg, sb, ts, c = dim**-0.5, (dim**-0.5) ** 0.3, 0.9 * dim**-0.5, 0.075
    out = agent_attention(
        q, k, v, agents, gather_scale=sg, broadcast_scale=sb, value_shortcut=c, key_bias=key_bias, text_k=tk,
        text_v=tv, text_bias=text_bias, text_scale=ts, chunk_size=8,  # several query chunks
    )
    ref = agent_attention_reference(q, k, v, agents, sg, sb, c, key_bias, tk, tv, text_bias, ts)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), ref, atol=ATOL, rtol=0)


def test_every_text_key_masked_leaves_the_agent_read_out():
    q, k, v, agents, tk, tv, _, _ = _inputs(16, 3, with_text=True)
    text_bias = torch.full((2, 1, 1, tk.shape[-2]), -torch.inf)
    out = agent_attention(q, k, v, agents, gather_scale=0.25, broadcast_scale=0.6, text_k=tk, text_v=tv,
                          text_bias=text_bias)
    plain = agent_attention(q, k, v, agents, gather_scale=0.25, broadcast_scale=0.6)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, plain, atol=ATOL, rtol=0)


def test_reference_with_one_hot_agents_is_dense_attention():
    """Agents = queries with a very sharp broadcast: each query reads its own agent, i.e. dense attention."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 12, 8, generator=g, dtype=torch.float64) for _ in range(3))
    q = q / q.norm(dim=-1, keepdim=True)
    ref = agent_attention_reference(q, k, v, q, 8**-0.5, 1e4)
    torch.testing.assert_close(ref, F.scaled_dot_product_attention(q, k, v), atol=1e-9, rtol=0)


def test_gather_with_lse_is_exact(gather_path):
    q, k, v, agents, _, _, key_bias, _ = _inputs(16, 5, na=11, with_mask=True)
    values, lse = gather_with_lse(agents, k, v, 0.3, key_bias, chunk_size=1)  # one agent row per chunk
    logits = agents @ k.transpose(-1, -2) * 0.3 + key_bias
    torch.testing.assert_close(lse, logits.logsumexp(-1), atol=ATOL, rtol=0)
    torch.testing.assert_close(values, torch.softmax(logits, -1) @ v, atol=ATOL, rtol=0)


@pytest.mark.parametrize("splits", [(5,), (3, 9), (1, 2, 20)])
def test_merge_attentions_is_attention_over_the_union(splits):
    g = torch.Generator().manual_seed(len(splits))
    q, k, v = torch.randn(2, 3, 7, 8, generator=g), torch.randn(2, 3, 23, 8, generator=g), torch.randn(2, 3, 23, 8,
                                                                                                        generator=g)
    s = q @ k.transpose(-1, -2)
    bounds = (0, *splits, 23)
    outs = [torch.softmax(s[..., a:b], -1) @ v[:, :, a:b] for a, b in zip(bounds, bounds[1:])]
    lses = [s[..., a:b].logsumexp(-1) for a, b in zip(bounds, bounds[1:])]
    out, lse = merge_attentions(outs, lses)
    torch.testing.assert_close(out, torch.softmax(s, -1) @ v, atol=ATOL, rtol=0)
    torch.testing.assert_close(lse, s.logsumexp(-1), atol=ATOL, rtol=0)


def test_merge_attentions_empty_sets():
    o = torch.randn(1, 1, 3, 4)
    empty = torch.full((1, 1, 3), -torch.inf)
    nan = torch.full_like(o, torch.nan)  # softmax over no key
    out, lse = merge_attentions([o, nan], [torch.zeros(1, 1, 3), empty])
    torch.testing.assert_close(out, o)
    out, lse = merge_attentions([nan, nan], [empty, empty])
    assert (out == 0).all() and torch.isneginf(lse).all()
    with pytest.raises(ValueError, match="one log-sum-exp per output"):
        merge_attentions([o], [])
    with pytest.raises(ValueError, match="lse be"):
        merge_attentions([o], [torch.zeros(1, 1, 4)])


@pytest.mark.parametrize("text", [0, 77])
@pytest.mark.parametrize("mask", [False, True])
def test_no_n_by_n_tensor_is_formed(text, mask):
    """Every tensor an op produces stays far below N x N (SDPA's internal tiles are not visible, its inputs are)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    LargestOutput.largest = max(LargestOutput.largest, t.numel())
            return out

    n = 64 * 64
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 16, generator=g) for _ in range(3))
    agents = q.reshape(1, 1, 8, 8, 8, 8, 16).mean(dim=(3, 5)).reshape(1, 1, 64, 16)
    tk, tv = (torch.randn(1, 1, text, 16, generator=g) for _ in range(2)) if text else (None, None)
    key_bias = torch.zeros(1, 1, 1, n) if mask else None
    with torch.no_grad(), LargestOutput():
        out = agent_attention(q, k, v, agents, gather_scale=0.25, broadcast_scale=0.66, value_shortcut=0.075,
                              key_bias=key_bias, text_k=tk, text_v=tv, chunk_size=1024)
    assert out.shape == q.shape
    assert LargestOutput.largest <= n * n // 16, (LargestOutput.largest, n * n)


def test_zero_agents():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="at least one agent"):
        agent_attention(q, q, q, q[:, :, :0], gather_scale=1.0, broadcast_scale=1.0)
