"""SparseVideoMethod: patterns against masked fp32 references, rectification, schedule, errors, tiny video models."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import attnplug
from attnplug.layout import TokenLayout
from attnplug.methods.base import CallInfo
from attnplug.methods.patterns import (
    band_block_mask,
    band_width_for_density,
    block_token_mask,
    head_coords,
    head_permutation,
    inverse_permutation,
    pool_blocks,
    pooled_block_probs,
    select_blocks,
    tile_permutation,
)
from attnplug.methods.sparse_video import PATTERNS, SparseVideoConfig, SparseVideoMethod, SparseVideoProcessor
from attnplug.testing import forward, tiny_model


def masked_reference(q, k, v, mask, scale=None):
    """fp32 softmax attention restricted to ``mask`` (``(N, N)`` or ``(H, N, N)``, bool)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q.double(), k.double().transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, -math.inf)
    return torch.matmul(torch.softmax(s, -1), v.double()).float()


def rel_err(a, b):
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


def _brute_tile_mask(layout: TokenLayout, tile, window, stride=(1, 1, 1)) -> torch.Tensor:
    """Token mask in the layout's own order (text first or last): tile windows, text global."""
    f, h, w = layout.grid
    tiles = [g // t for g, t in zip(layout.grid, tile)]
    n_img, n = layout.image_tokens, layout.num_tokens
    img = list(range(layout.image_slice().start, layout.image_slice().stop))
    mask = torch.ones(n, n, dtype=torch.bool)
    tc = []
    for i in range(n_img):
        c = (i // (h * w), (i // w) % h, i % w)
        tc.append(tuple(x // t for x, t in zip(c, tile)))
    for qi, ki in itertools.product(range(n_img), range(n_img)):
        ok = True
        for d in range(3):
            leader = min((tc[qi][d] // stride[d]) * stride[d] + (stride[d] - 1) // 2, tiles[d] - 1)
            start = min(max(leader - window[d] // 2, 0), tiles[d] - window[d])
            ok &= start <= tc[ki][d] < start + window[d]
        mask[img[qi], img[ki]] = ok
    return mask


@pytest.mark.parametrize("text_first,stride", [(True, (1, 1, 1)), (False, (1, 1, 1)), (True, (1, 2, 2))])
def test_tiles_matches_brute_force_reference(text_first, stride):
    layout = TokenLayout(4, 8, 8, text_tokens=5, text_first=text_first)
    cfg = SparseVideoConfig(pattern="tiles", tile=(2, 2, 2), window=(1, 3, 3), stride=stride, backend="torch")
    q, k, v = (torch.randn(2, 3, layout.num_tokens, 16) for _ in range(3))
    method = cfg.build()
    out = method(q, k, v, layout, None, CallInfo(scale=0.3))
    ref = masked_reference(q, k, v, _brute_tile_mask(layout, cfg.tile, cfg.window, stride), 0.3)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    rec = method.report()[-1]
    assert rec["dense_reason"] is None and rec["window"] == (1, 3, 3) and rec["stride"] == stride
    assert 0.2 < rec["density"] < 0.5


def test_tiles_window_from_density_and_full_window_is_dense():
    layout = TokenLayout(4, 8, 8)
    q, k, v = (torch.randn(1, 2, layout.num_tokens, 8) for _ in range(3))
    method = SparseVideoConfig(pattern="tiles", tile=(1, 4, 4), density=0.15).build()
    method(q, k, v, layout)
    rec = method.report()[-1]
    assert rec["density"] <= 0.2
    full = SparseVideoConfig(pattern="tiles", tile=(1, 4, 4), window=(9, 9, 9)).build()
    torch.testing.assert_close(full(q, k, v, layout), F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=0)
    assert full.report()[-1]["dense_reason"] == "window covers the whole grid"


def _planted_heads(layout, d=16):
    f, h, w = layout.grid
    n = layout.image_tokens
    frame = torch.arange(n) // (h * w)
    pos = torch.arange(n) % (h * w)
    frame_code = F.one_hot(frame, d).float() * 6
    pos_code = F.normalize(torch.randn(h * w, d), dim=-1)[pos] * 6
    q = torch.stack([frame_code, pos_code])[None].repeat(2, 1, 1, 1) + 0.05 * torch.randn(2, 2, n, d)
    return q, q + 0.05 * torch.randn_like(q), torch.randn(2, 2, n, d)


def test_heads_chooses_planted_heads_and_matches_reference():
    layout = TokenLayout(4, 4, 4)
    cfg = SparseVideoConfig(pattern="heads", density=0.3, block_size=16, num_sampled_rows=24, backend="torch")
    q, k, v = _planted_heads(layout)
    method = cfg.build()
    out = method(q, k, v, layout, None, CallInfo(layer_index=0, step=3))
    rec = method.report()[-1]
    assert (rec["spatial_heads"], rec["temporal_heads"]) == (1, 1)
    masks = []
    for kind in ("spatial", "temporal"):
        coord = head_coords(layout.grid, kind)
        width = band_width_for_density(coord, 16, 0.3)
        bm = band_block_mask(coord, width, 16, layout.num_tokens)
        masks.append(block_token_mask(bm, inverse_permutation(head_permutation(layout.grid, kind)), 16))
    ref = masked_reference(q, k, v, torch.stack(masks))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # Deterministic given the seed.
    again = cfg.build()(q, k, v, layout, None, CallInfo(layer_index=0, step=3))
    assert torch.equal(out, again)


def test_heads_all_one_kind_with_text():
    layout = TokenLayout(4, 4, 4, text_tokens=6, text_first=True)
    q, k, v = _planted_heads(TokenLayout(4, 4, 4))
    # Both heads spatial (copies of the planted spatial head), 6 text tokens in front.
    q, k, v = (torch.cat([torch.randn(2, 2, 6, 16), x[:, :1].repeat(1, 2, 1, 1)], 2) for x in (q, k, v))
    method = SparseVideoConfig(pattern="heads", density=0.3, block_size=16, backend="torch").build()
    out = method(q, k, v, layout)
    rec = method.report()[-1]
    assert rec["spatial_heads"] == 2 and torch.isfinite(out).all()
    coord = head_coords(layout.grid, "spatial")
    bm = band_block_mask(coord, band_width_for_density(coord, 16, 0.3), 16, layout.num_tokens)
    tok = block_token_mask(bm, torch.arange(layout.num_tokens), 16)  # text-last order
    order = torch.cat([torch.arange(6, 70), torch.arange(6)])  # text-last position of each original token
    pos = inverse_permutation(order)
    tok = tok[pos][:, pos]
    torch.testing.assert_close(out, masked_reference(q, k, v, tok), atol=1e-5, rtol=1e-5)


def _planted_blocks(layout, tile, d=16, noise=0.1, batch=2, heads=2):
    """q = k = per-tile centroid + noise, v = per-tile mean + noise (pooled statistics are informative)."""
    f, h, w = layout.grid
    idx = torch.arange(layout.image_tokens)
    t = [(idx // (h * w)) // tile[0], ((idx // w) % h) // tile[1], (idx % w) // tile[2]]
    tiles = [g // s for g, s in zip(layout.grid, tile)]
    tid = (t[0] * tiles[1] + t[1]) * tiles[2] + t[2]
    nt = math.prod(tiles)
    cq = torch.randn(batch, heads, nt, d) * 1.2
    cv = torch.randn(batch, heads, nt, d)
    q = cq[:, :, tid] + noise * torch.randn(batch, heads, layout.image_tokens, d)
    k = cq[:, :, tid] + noise * torch.randn(batch, heads, layout.image_tokens, d)
    v = cv[:, :, tid] + noise * torch.randn(batch, heads, layout.image_tokens, d)
    return q, k, v


def test_topk_without_rectification_matches_selected_blocks():
    layout = TokenLayout(4, 8, 8)
    tile = (1, 4, 4)
    q, k, v = _planted_blocks(layout, tile)
    cfg = SparseVideoConfig(pattern="topk", density=0.25, block_size=16, tile=tile, rectify="none", backend="torch")
    out = cfg.build()(q, k, v, layout)
    perm = tile_permutation(layout.grid, tile)
    qm, _, _ = pool_blocks(q[:, :, perm], 16)
    km, _, ks = pool_blocks(k[:, :, perm], 16)
    probs = pooled_block_probs(qm, km, ks, 16**-0.5)
    sel = select_blocks(probs, math.ceil(0.25 * 16), torch.eye(16, dtype=torch.bool))
    tok = block_token_mask(sel, inverse_permutation(perm), 16)
    torch.testing.assert_close(out, masked_reference(q, k, v, tok), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rectify", ["gapr", "all"])
def test_rectification_reduces_error_vs_plain_topk(rectify):
    layout = TokenLayout(4, 8, 16)
    tile = (1, 4, 4)
    q, k, v = _planted_blocks(layout, tile, batch=1)
    dense = F.scaled_dot_product_attention(q, k, v)
    common = dict(pattern="topk", density=0.2, block_size=16, tile=tile, backend="torch")
    plain = SparseVideoConfig(rectify="none", **common).build()(q, k, v, layout)
    method = SparseVideoConfig(rectify=rectify, **common).build()
    rect = method(q, k, v, layout)
    e_plain, e_rect = rel_err(plain, dense), rel_err(rect, dense)
    assert e_plain > 0.05  # the planted structure leaves real mass outside the kept blocks
    assert e_rect < 0.5 * e_plain, (e_rect, e_plain)
    print(f"rectify={rectify}: relative error {e_rect:.4f} vs plain top-k {e_plain:.4f}")
    assert method.report()[-1]["compensated_fraction"] > 0.5


def test_topk_mass_and_text_global():
    layout = TokenLayout(4, 8, 8, text_tokens=7, text_first=True)
    q, k, v = (torch.randn(1, 2, layout.num_tokens, 16) for _ in range(3))
    method = SparseVideoConfig(pattern="topk", density=0.3, topk_mass=0.5, block_size=16, tile=(1, 4, 4)).build()
    out = method(q, k, v, layout)
    assert torch.isfinite(out).all()
    # Text queries attend to everything and are not rectified: exact dense rows.
    torch.testing.assert_close(out[:, :, :7], F.scaled_dot_product_attention(q, k, v)[:, :, :7], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_density_one_equals_dense(pattern):
    layout = TokenLayout(3, 4, 4, text_tokens=3, text_first=True)
    q, k, v = (torch.randn(2, 2, layout.num_tokens, 24) for _ in range(3))
    dense = F.scaled_dot_product_attention(q, k, v)
    method = SparseVideoConfig(pattern=pattern, density=1.0, tile=(1, 2, 2), block_size=8).build()
    torch.testing.assert_close(method(q, k, v, layout), dense, atol=1e-5, rtol=0)
    # The threshold pattern has no density budget: it runs the kernel (nothing is skipped on these inputs).
    assert method.report()[-1]["dense_reason"] == (None if pattern == "threshold" else "density 1")


def test_full_budget_through_kernel_equals_dense():
    """Budgets covering every block go through the kernel (and rectification) and still equal dense."""
    layout = TokenLayout(3, 4, 4, text_tokens=3, text_first=True)
    q, k, v = (torch.randn(2, 2, layout.num_tokens, 24) for _ in range(3))
    dense = F.scaled_dot_product_attention(q, k, v)
    topk = SparseVideoConfig(pattern="topk", density=0.99, block_size=8, backend="torch").build()
    torch.testing.assert_close(topk(q, k, v, layout), dense, atol=1e-5, rtol=0)
    thr = SparseVideoConfig(pattern="threshold", threshold=1e6, block_size=8, backend="torch").build()
    torch.testing.assert_close(thr(q, k, v, layout), dense, atol=1e-5, rtol=0)
    assert thr.report()[-1]["effective_density"] == 1.0


def test_threshold_skips_and_reports_effective_density():
    layout = TokenLayout(4, 8, 8)
    q, k, v = _planted_blocks(layout, (1, 4, 4), noise=0.05)
    q = q * 3
    method = SparseVideoConfig(pattern="threshold", threshold=4.0, block_size=16, tile=(1, 4, 4)).build()
    out = method(q, k, v, layout)
    rec = method.report()[-1]
    assert rec["density"] == 1.0 and rec["effective_density"] < 0.9
    assert rel_err(out, F.scaled_dot_product_attention(q, k, v)) < 0.05
    tiles = SparseVideoConfig(pattern="tiles", tile=(1, 4, 4), window=(3, 1, 1), threshold=4.0).build()
    tiles(q, k, v, layout)
    assert tiles.report()[-1]["effective_density"] <= tiles.report()[-1]["density"]


def test_warmup_dense_layers_and_summary():
    layout = TokenLayout(3, 4, 4)
    q, k, v = (torch.randn(1, 2, layout.num_tokens, 8) for _ in range(3))
    cfg = SparseVideoConfig(pattern="tiles", tile=(1, 2, 2), window=(1, 1, 1), dense_warmup_steps=2,
                            dense_first_layers=1, dense_last_layers=1)
    method = cfg.build()
    dense = F.scaled_dot_product_attention(q, k, v)
    for step, layer in itertools.product(range(3), range(4)):
        out = method(q, k, v, layout, None, CallInfo(layer_index=layer, num_layers=4, step=step))
        if step < 2 or layer in (0, 3):
            assert torch.equal(out, dense)
    reasons = [r["dense_reason"] for r in method.report()]
    assert reasons.count("warm-up step") == 8 and reasons.count(None) == 2
    assert reasons.count("dense first layer") == 1 and reasons.count("dense last layer") == 1
    s = method.summary()
    assert s["calls"] == 12 and s["sparse_calls"] == 2 and s["density_by_step"][0] == 1.0
    assert s["density_by_step"][2] < 1.0
    method.clear_report()
    assert method.report() == []


def test_mask_and_cross_attention_are_handed_back():
    layout = TokenLayout(3, 4, 4)
    q = torch.randn(1, 2, 48, 8)
    method = SparseVideoConfig(pattern="tiles", tile=(1, 2, 2)).build()
    assert method(q, q, q, layout, mask=torch.ones(48, 48, dtype=torch.bool)) is None
    assert method(q, torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8), layout) is None


# ---------------------------------------------------------------------------------------------------- bad input
def test_unknown_pattern_lists_valid_ones():
    with pytest.raises(ValueError, match="'tiles', 'heads', 'topk', 'threshold'.*'blocks'"):
        SparseVideoConfig(pattern="blocks")


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, True, "0.2"])
def test_density_out_of_range(density):
    with pytest.raises(ValueError, match=r"density must be a number in \(0, 1\]"):
        SparseVideoConfig(density=density)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tile=(2, 0, 2)), "tile"),
        (dict(window=(1, 2)), "window"),
        (dict(stride=0), "stride"),
        (dict(tile_fit="pad"), "tile_fit"),
        (dict(rectify="yes"), "rectify"),
        (dict(topk_mass=1.2), "topk_mass"),
        (dict(threshold=-1.0), "threshold"),
        (dict(dense_warmup_steps=-1), "dense_warmup_steps"),
        (dict(block_size=0), "block_size"),
        (dict(backend="cuda"), "backend"),
    ],
)
def test_bad_config_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseVideoConfig(**kwargs)


def test_tile_not_dividing_layout():
    layout = TokenLayout(3, 6, 8)
    q = torch.randn(1, 1, layout.num_tokens, 8)
    with pytest.raises(ValueError, match=r"tile=\(2, 4, 4\) does not divide the token grid \(3, 6, 8\).*frames 3 % 2"):
        SparseVideoConfig(pattern="tiles", tile=(2, 4, 4), density=0.3).build()(q, q, q, layout)
    method = SparseVideoConfig(pattern="tiles", tile=(2, 4, 4), density=0.3, tile_fit="shrink").build()
    out = method(q, q, q, layout)
    assert torch.isfinite(out).all() and method.report()[-1]["tile"] == (1, 3, 4)


@pytest.mark.parametrize("pattern", ["tiles", "heads"])
def test_video_pattern_on_image_layout(pattern):
    layout = TokenLayout(1, 8, 8)
    q = torch.randn(1, 1, 64, 8)
    with pytest.raises(ValueError, match=r"needs a video token layout \(frames > 1\)"):
        SparseVideoConfig(pattern=pattern, tile=(1, 4, 4)).build()(q, q, q, layout)


def test_topk_works_on_image_layout():
    layout = TokenLayout(1, 8, 8)
    q, k, v = (torch.randn(1, 1, 64, 8) for _ in range(3))
    out = SparseVideoConfig(pattern="topk", block_size=16, tile=(1, 4, 4)).build()(q, k, v, layout)
    assert torch.isfinite(out).all()


def test_processor_type_error():
    with pytest.raises(TypeError, match="SparseVideoConfig"):
        SparseVideoProcessor(attnplug.DenseConfig())


# ---------------------------------------------------------------------------------------------------- tiny models
def _config(pattern):
    return SparseVideoConfig(pattern=pattern, density=0.3, tile=(1, 4, 4), block_size=16, num_sampled_rows=16)


def _run_tiny(family, pattern):
    """Apply ``pattern`` to a tiny ``family`` model for one forward; check it ran; return (stats, method)."""
    model, inputs = tiny_model(family, frames=3, height=16, width=16)
    method = _config(pattern).build()
    with attnplug.applied(model, method):
        out = forward(model, inputs)
        stats = attnplug.stats(model)
    assert torch.isfinite(out).all()
    assert stats.get("method", 0) > 0, stats
    return stats, method


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_tiny_video_models_every_pattern(family, pattern):
    stats, method = _run_tiny(family, pattern)
    sparse = [r for r in method.report() if r["dense_reason"] is None]
    assert len(method.report()) == stats["method"] and sparse
    if pattern != "threshold":
        assert all(r["density"] < 1.0 for r in sparse)


def test_standalone_processor_on_tiny_wan():
    model, inputs = tiny_model("wan", frames=3, height=16, width=16)
    proc = SparseVideoProcessor(_config("tiles"), layout=TokenLayout(3, 8, 8))
    model.set_attn_processor(proc)
    out = forward(model, inputs)
    assert torch.isfinite(out).all()
    assert len(proc.report()) == 2 and proc.report()[0]["pattern"] == "tiles"
    assert isinstance(proc.method, SparseVideoMethod)


# ---------------------------------------------------------------------------------------------------- key padding
def _padding_mask(layout, batch, padded):
    keep = torch.ones(batch, layout.num_tokens, dtype=torch.bool)
    for b, p in enumerate(padded):
        if p:
            keep[b, layout.num_tokens - p:] = False  # text last: padding at the end of the text
    return keep


def test_key_padding_mask_full_budget_equals_masked_sdpa():
    layout = TokenLayout(3, 4, 4, text_tokens=6)
    q, k, v = (torch.randn(3, 2, layout.num_tokens, 16) for _ in range(3))
    keep = _padding_mask(layout, 3, [2, 0, 2])
    mask = keep[:, None, None, :]
    method = SparseVideoConfig(pattern="threshold", threshold=1e6, block_size=8, backend="torch").build()
    out = method(q, k, v, layout, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-5, rtol=0)
    assert len(method.report()) == 1


def test_key_padding_mask_tiles_matches_brute_force():
    layout = TokenLayout(4, 8, 8, text_tokens=5)
    q, k, v = (torch.randn(2, 2, layout.num_tokens, 16) for _ in range(3))
    keep = _padding_mask(layout, 2, [2, 0])
    cfg = SparseVideoConfig(pattern="tiles", tile=(2, 2, 2), window=(1, 3, 3), backend="torch")
    out = cfg.build()(q, k, v, layout, keep[:, None, None, :])
    for b in range(2):
        tile_mask = _brute_tile_mask(layout, cfg.tile, cfg.window) & keep[b][None, :]
        ref = masked_reference(q[b:b + 1], k[b:b + 1], v[b:b + 1], tile_mask)
        torch.testing.assert_close(out[b:b + 1], ref, atol=1e-5, rtol=1e-5)
    # Padding on image tokens or non-key-padding masks are handed back to dense attention.
    bad = keep.clone()
    bad[0, 0] = False
    assert cfg.build()(q, k, v, layout, bad[:, None, None, :]) is None
    assert cfg.build()(q, k, v, layout, torch.zeros(2, 1, 1, layout.num_tokens)) is None


@pytest.mark.parametrize("family,pattern", [("hunyuanvideo", "tiles"), ("ltx", "topk")])
def test_tiny_hunyuanvideo_and_ltx(family, pattern):
    _, method = _run_tiny(family, pattern)
    assert all(r["dense_reason"] is None for r in method.report())
