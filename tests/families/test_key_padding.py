"""Neighbourhood, window and FreeSwim attention honour a boolean key-padding mask (HunyuanVideo's and Qwen-Image's
padded prompts): on the kept tokens, a masked call equals the same method on the sequence with the padded tokens
removed."""

import pytest
import torch

from attnplug.layout import TokenLayout
from attnplug.methods.base import CallInfo
from attnplug.methods.freeswim import FreeSwimConfig, FreeSwimMethod
from attnplug.methods.neighborhood import NeighborhoodConfig, NeighborhoodMethod
from attnplug.methods.window import WindowConfig, WindowMethod

GRID, TEXT = (2, 6, 7), 6


def _method(name):
    if name == "freeswim":  # the windowed branch: a (3, 3) training grid gives a 3 x 3 window on the 6 x 7 grid
        return FreeSwimMethod(FreeSwimConfig(train_grid=(3, 3), override_cross_attention=False))
    if name.startswith("neighborhood"):  # tiles folds the padding into the keys; torch (block-sparse) uses kv_keep
        backend = name.partition("-")[2] or "tiles"
        return NeighborhoodMethod(NeighborhoodConfig(kernel_size=(3, 3, 3), backend=backend))
    return WindowMethod(WindowConfig(window_size=(2, 3, 4)))


@pytest.mark.parametrize("name", ["neighborhood", "neighborhood-torch", "window", "freeswim"])
@pytest.mark.parametrize("text_first", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_call_equals_the_call_without_the_padded_keys(name, text_first, dtype):
    torch.manual_seed(0)
    layout = TokenLayout(*GRID, text_tokens=TEXT, text_first=text_first)
    n, d = layout.num_tokens, 40
    q, k, v = (torch.randn(2, 2, n, d, dtype=dtype) for _ in range(3))
    keep = torch.ones(2, n, dtype=torch.bool)
    text = layout.text_slice()
    keep[0, text.stop - 2:text.stop] = False  # sample 0 pads 2 prompt tokens, sample 1 pads 3
    keep[1, text.stop - 3:text.stop] = False
    method = _method(name)
    info = CallInfo(step=0)
    out = method(q, k, v, layout, keep[:, None, None, :], info)
    assert out is not None and out.shape == q.shape
    for b, padded in ((0, 2), (1, 3)):
        rows = keep[b]
        small = TokenLayout(*GRID, text_tokens=TEXT - padded, text_first=text_first)
        ref = method(q[b:b + 1, :, rows], k[b:b + 1, :, rows], v[b:b + 1, :, rows], small, None, info)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out[b:b + 1, :, rows], ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", ["neighborhood", "window", "freeswim"])
def test_other_masks_are_handed_back(name):
    layout = TokenLayout(*GRID, text_tokens=TEXT)
    q = torch.randn(1, 2, layout.num_tokens, 16)
    additive = torch.zeros(1, 1, 1, layout.num_tokens)  # a float mask is not a key-padding mask
    method = _method(name)
    assert method(q, q, q, layout, additive, CallInfo(step=0)) is None
    assert method.last_reason() == "attention-mask"


def _keep(batch: int, n: int) -> torch.Tensor:
    keep = torch.ones(batch, n, dtype=torch.bool)
    keep[0, -2:] = False
    keep[1, -3:] = False
    return keep


@pytest.mark.parametrize("name", ["neighborhood", "window"])
def test_a_key_row_expanded_over_queries_and_heads_runs_as_key_padding(name):
    """Lumina-Next expands its (B, N) key mask to (B, heads, N, N): the method sees the one key row, and its output
    equals the same method given the (B, 1, 1, N) key-padding mask."""
    from attnplug.processors.core import broadcast_key_rows

    torch.manual_seed(0)
    layout = TokenLayout(*GRID, text_tokens=TEXT)
    n = layout.num_tokens
    q, k, v = (torch.randn(2, 2, n, 16) for _ in range(3))
    keep = _keep(2, n)
    expanded = keep.view(2, 1, 1, n).expand(-1, 2, n, -1)
    reduced = broadcast_key_rows(expanded)
    assert reduced.shape == (2, 1, 1, n) and torch.equal(reduced[:, 0, 0], keep)
    method, info = _method(name), CallInfo(step=0)
    out = method(q, k, v, layout, reduced, info)
    assert out is not None
    torch.testing.assert_close(out, method(q, k, v, layout, keep[:, None, None, :], info))


def test_a_query_and_key_padding_mask_is_not_reduced_and_is_handed_back():
    """HunyuanVideo 1.5's (B, 1, N, N) mask is keep[i] & keep[j]: padded query rows are fully masked (stock SDPA
    returns zeros there), so it is not a key-padding mask; a materialised mask with equal rows is not reduced either
    (decided from strides, never from values). Both reach the method unchanged, which hands them back (the interception
    core runs the first as a key mask where the family declares it: tests/processors/test_mask_forms.py)."""
    from attnplug.processors.core import broadcast_key_rows

    layout = TokenLayout(*GRID, text_tokens=TEXT)
    n = layout.num_tokens
    keep = _keep(2, n)
    rows = keep.view(2, 1, 1, n).repeat(1, 1, n, 1)
    outer = rows & rows.transpose(2, 3)
    q = torch.randn(2, 2, n, 16)
    for mask in (outer, rows):
        assert broadcast_key_rows(mask) is mask
        method = _method("neighborhood")
        assert method(q, q, q, layout, broadcast_key_rows(mask), CallInfo(step=0)) is None
        assert method.last_reason() == "attention-mask"
