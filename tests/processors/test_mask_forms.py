"""HunyuanVideo 1.5's ``(B, 1, N, N)`` self-attention mask ``keep[i] & keep[j]`` (its family's ``mask_form``) runs
methods exactly: the method gets the ``(B, 1, 1, N)`` key mask, the padded query rows get stock attention's output,
and any other ``(B, 1, N, N)`` mask is handed back (``mask-unsupported``)."""

import logging

import pytest
import torch
import torch.nn.functional as F

import attnplug
from attnplug.layout import TokenLayout
from attnplug.methods.base import CallInfo
from attnplug.methods.dense import DenseMethod
from attnplug.methods.neighborhood import NeighborhoodConfig, NeighborhoodMethod
from attnplug.processors.core import Interception, Site
from attnplug.processors.stats import CallStats
from attnplug.testing_families import tiny_denoiser
from attnplug.testing_matrix import _forward

GRID, TEXT = (2, 6, 7), 6
PADDED = (2, 3)  # padded prompt tokens of sample 0 and 1


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def _call(n: int, d: int = 16):
    torch.manual_seed(0)
    return tuple(torch.randn(2, 2, n, d) for _ in range(3))


def _outer(layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask as HunyuanVideo15AttnProcessor2_0 builds it: [image, text], the text padded at its end."""
    n = layout.num_tokens
    keep = torch.ones(2, n, dtype=torch.bool)
    for b, padded in enumerate(PADDED):
        keep[b, n - padded:] = False
    rows = keep.view(2, 1, 1, n).repeat(1, 1, n, 1)
    return rows & rows.transpose(2, 3), keep


def _attend(method, layout, q, k, v, mask):
    stats = CallStats()
    core = Interception(method, stats, lambda site, n: layout, mask_form="outer-key-padding")
    out = core.attend(Site("blocks.0.attn"), CallInfo(step=0), 1, 0, q, k, v, mask, 0.0, False, None, False)
    return out, stats.as_dict()["self"]


def test_dense_through_the_key_mask_equals_stock_on_every_row():
    layout = TokenLayout(*GRID, text_tokens=TEXT)
    q, k, v = _call(layout.num_tokens)
    mask, keep = _outer(layout)
    out, st = _attend(DenseMethod(), layout, q, k, v, mask)
    assert st["method"] == 1
    stock = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, stock, atol=1e-6, rtol=1e-6)
    assert torch.equal(out[~keep[:, None, :, None].expand_as(out)], stock[~keep[:, None, :, None].expand_as(out)])


def test_a_method_runs_with_the_key_mask_and_equals_its_reference_without_the_padded_tokens():
    layout = TokenLayout(*GRID, text_tokens=TEXT)
    q, k, v = _call(layout.num_tokens)
    mask, keep = _outer(layout)
    method = NeighborhoodMethod(NeighborhoodConfig(kernel_size=(3, 3, 3)))
    out, st = _attend(method, layout, q, k, v, mask)
    assert st["method"] == 1 and out is not None
    stock = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for b, padded in enumerate(PADDED):
        rows = keep[b]
        small = TokenLayout(*GRID, text_tokens=TEXT - padded)
        ref = method(q[b:b + 1, :, rows], k[b:b + 1, :, rows], v[b:b + 1, :, rows], small, None, CallInfo(step=0))
        torch.testing.assert_close(out[b:b + 1, :, rows], ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(out[b, :, ~rows], stock[b, :, ~rows])  # padded query rows: what stock gives


def test_another_query_and_key_mask_is_handed_back():
    layout = TokenLayout(*GRID, text_tokens=TEXT)
    q, k, v = _call(layout.num_tokens)
    mask, _ = _outer(layout)
    grid_hole = mask.clone()
    grid_hole[0, 0, 5, 7] = False  # one grid query does not see one grid key: not keep[i] & keep[j]
    padded_grid = mask.clone()
    padded_grid[1, 0, :, 4] = padded_grid[1, 0, 4, :] = False  # of the form, but a grid token padded
    for other in (grid_hole, padded_grid):
        out, st = _attend(DenseMethod(), layout, q, k, v, other)
        assert out is None and st["reasons"] == {"mask-unsupported": 1}, st
    out, st = _attend(DenseMethod(), layout, q, k, v, mask.float())  # not boolean: the method's own rules
    assert out is not None and st["method"] == 1


def _padded_inputs():
    model, inputs = tiny_denoiser("HunyuanVideo15Transformer3DModel")
    text = inputs["encoder_attention_mask"].clone()
    text[:] = 1
    for b, padded in enumerate(PADDED):
        text[b, text.shape[1] - padded:] = 0
    return model, {**inputs, "encoder_attention_mask": text}


def test_dense_on_hunyuan_video15_with_padded_prompts_equals_stock(monkeypatch):
    import attnplug.processors.core as core

    filled = []
    fill = core.fill_masked_rows
    monkeypatch.setattr(core, "fill_masked_rows", lambda *a: filled.append(1) or fill(*a))
    model, inputs = _padded_inputs()
    stock = _forward(model, inputs)
    attnplug.apply(model, attnplug.DenseConfig())
    try:
        out = _forward(model, inputs)
        st = attnplug.stats(model)["self"]
    finally:
        attnplug.remove(model)
    assert st["calls"] > 0 and st["method"] == st["calls"] == len(filled), st  # every call through the key mask
    assert (out - stock).abs().max().item() <= 1e-5
    assert torch.equal(_forward(model, inputs), stock)


def test_neighbourhood_runs_on_hunyuan_video15():
    model, inputs = _padded_inputs()
    attnplug.apply(model, attnplug.NeighborhoodConfig(kernel_size=3))
    try:
        out = _forward(model, inputs)
        st = attnplug.stats(model)["self"]
    finally:
        attnplug.remove(model)
    assert st["method"] == st["calls"] > 0, st
    assert torch.isfinite(out).all()


def test_the_form_check_is_the_one_host_read_of_a_call():
    """Reducing the mask and filling the padded rows are tensor ops; whether the mask has the form is read once."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from sync_counter import SyncCounter

    layout = TokenLayout(*GRID, text_tokens=TEXT)
    q, k, v = _call(layout.num_tokens)
    mask, _ = _outer(layout)
    method = NeighborhoodMethod(NeighborhoodConfig(kernel_size=(3, 3, 3)))
    _attend(method, layout, q, k, v, mask)  # builds the method's tables
    with SyncCounter() as sync:
        out, st = _attend(method, layout, q, k, v, mask)
    assert out is not None and st["method"] == 1
    sites = sync.sites()
    assert sum(sites.values()) == 1 and all("mask_forms.py" in site for site in sites), sites


def test_in_a_compiled_graph_the_mask_is_handed_back():
    """The form is read from the mask's values, which a compiled graph does not do: those calls run stock."""
    model, inputs = _padded_inputs()
    stock = _forward(model, inputs)
    attnplug.apply(model, attnplug.NeighborhoodConfig(kernel_size=3))
    try:
        _forward(model, inputs)  # eager: the grid and the method's tables
        attnplug.reset_stats(model)
        model.compile_repeated_blocks(fullgraph=True, backend="eager")
        out = _forward(model, inputs)
        st = attnplug.stats(model)["self"]
    finally:
        attnplug.remove(model)
        torch._dynamo.reset()
    assert st["reasons"].get("mask-unsupported", 0) > 0 and st["method"] == 0, st
    torch.testing.assert_close(out, stock, atol=1e-5, rtol=1e-5)
