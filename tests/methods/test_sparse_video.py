"""SparseVideoMethod: patterns against masked fp32 references, rectification, flagship grids, step-0 checks, the
bounded report, threads, tiny video models."""

from __future__ import annotations

import itertools
import logging
import math
import tracemalloc

import pytest
import torch
import torch.nn.functional as F

import attnplug
from attnplug.layout import TokenLayout
from attnplug.methods.base import CallInfo
from attnplug.methods.patterns import (
    PATTERNS,
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
from attnplug.methods.sparse_video import SparseVideoConfig, SparseVideoMethod
from attnplug.testing import forward, run_concurrently, tiny_model


def masked_reference(q, k, v, mask, scale=None):
    """fp32 softmax attention restricted to ``mask`` (``(Nq, N)`` or ``(H, Nq, N)``, bool)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.matmul(q.double(), k.double().transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, -math.inf)
    return torch.matmul(torch.softmax(s, -1), v.double()).float()


def rel_err(a, b):
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


def _leader_window(a, length, w, s):
    """NATTEN's window along one dimension (the stride group's centre leads, right-hand one for even strides)."""
    leader = min((a // s) * s + s // 2, length - 1)
    start = min(max(leader - w // 2, 0), length - w)
    return start, start + w


def sta_mask(layout: TokenLayout, tile, window, stride=(1, 1, 1), rows=None) -> torch.Tensor:
    """Sliding-tile token mask ``(len(rows), N)`` in the layout's own order, from the definition; text global."""
    f, h, w = layout.grid
    n_img, n = layout.image_tokens, layout.num_tokens
    off = layout.image_slice().start
    idx = torch.arange(n_img)
    tc = torch.stack([idx // (h * w) // tile[0], (idx // w) % h // tile[1], idx % w // tile[2]], -1)
    tiles = [-(-g // t) for g, t in zip(layout.grid, tile)]  # a padded grid: ceil(g / t) tiles
    rows = torch.arange(n) if rows is None else rows
    mask = torch.ones(len(rows), n, dtype=torch.bool)
    for r, qi in enumerate(rows.tolist()):
        if not off <= qi < off + n_img:
            continue  # a text query sees everything
        ok = torch.ones(n_img, dtype=torch.bool)
        for d in range(3):
            lo, hi = _leader_window(int(tc[qi - off, d]), tiles[d], window[d], stride[d])
            ok &= (tc[:, d] >= lo) & (tc[:, d] < hi)
        mask[r, off:off + n_img] = ok
    return mask


# ---------------------------------------------------------------------------------------------------- tiles
@pytest.mark.parametrize("text_first,stride", [(True, (1, 1, 1)), (False, (1, 1, 1)), (True, (1, 2, 2))])
def test_tiles_matches_brute_force_reference(text_first, stride):
    layout = TokenLayout(4, 8, 8, text_tokens=5, text_first=text_first)
    cfg = SparseVideoConfig(pattern="tiles", tile=(2, 2, 2), window_tiles=(1, 3, 3), stride_tiles=stride,
                            backend="torch")
    q, k, v = (torch.randn(2, 3, layout.num_tokens, 16) for _ in range(3))
    method = cfg.build()
    out = method(q, k, v, layout, None, CallInfo(scale=0.3))
    ref = masked_reference(q, k, v, sta_mask(layout, cfg.tile, cfg.window_tiles, stride), 0.3)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    rep = method.report()
    plan = rep["plans"]["4x8x8"]
    assert rep["sparse_calls"] == 1 and plan["window_tiles"] == (1, 3, 3) and plan["stride_tiles"] == stride
    assert 0.2 < rep["density"] < 0.5


def test_tiles_even_stride_uses_natten_leader():
    """Window 2, stride 2 over 4 tiles: the group {2, 3} is led by its right-hand centre 3 (keys 2..3), as in
    NATTEN; the left-hand centre would give keys 1..2."""
    layout = TokenLayout(2, 4, 4)
    cfg = SparseVideoConfig(pattern="tiles", tile=(1, 1, 1), window_tiles=(1, 2, 2), stride_tiles=(1, 2, 2),
                            backend="torch")
    q, k, v = (torch.randn(1, 1, 32, 8) for _ in range(3))
    out = cfg.build()(q, k, v, layout)
    mask = sta_mask(layout, (1, 1, 1), (1, 2, 2), (1, 2, 2))
    assert mask[10].nonzero().flatten().tolist() == [10, 11, 14, 15]  # query (t, y, x) = (0, 2, 2)
    torch.testing.assert_close(out, masked_reference(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_tiles_window_from_density_and_full_window_is_handed_back():
    layout = TokenLayout(4, 8, 8)
    q, k, v = (torch.randn(1, 2, layout.num_tokens, 8) for _ in range(3))
    method = SparseVideoConfig(pattern="tiles", tile=(1, 4, 4), density=0.15).build()
    method(q, k, v, layout)
    assert method.report()["density"] <= 0.2
    full = SparseVideoConfig(pattern="tiles", tile=(1, 4, 4), window_tiles=(9, 9, 9)).build()
    assert full(q, k, v, layout) is None
    assert full.report()["handed_back"] == {"window-covers-grid": 1} and full.last_reason() == "window-covers-grid"


README_GRIDS = [(5, 8, 8), (121, 8, 8), (21, 30, 52)]  # tiny Wan 128² x 17 frames, 121 frames, Wan 2.1 480p x 81


@pytest.mark.parametrize("grid", README_GRIDS, ids=lambda g: "x".join(map(str, g)))
def test_readme_config_runs_on_flagship_grids(grid):
    """``SparseVideoConfig(pattern="tiles", density=0.2)``: the requested tile is kept (the grid is padded up to a
    tile multiple) and the output equals the sliding-tile masked reference (64 sampled rows, fp32 vs fp64:
    atol 1e-5)."""
    layout = TokenLayout(*grid, text_tokens=3)
    q, k, v = (torch.randn(1, 1, layout.num_tokens, 8) for _ in range(3))
    method = SparseVideoConfig(pattern="tiles", density=0.2).build()
    out = method(q, k, v, layout, None, CallInfo(step=0))
    rep = method.report()
    plan = rep["plans"]["x".join(map(str, grid))]
    assert plan["tile"] == tuple(min(4, g) for g in grid)
    assert plan["padded_positions"] == (0 if all(g % t == 0 for g, t in zip(grid, plan["tile"])) else
                                        plan["slots"] * math.prod(plan["tiles"]) - math.prod(grid))
    assert 0.1 < rep["density"] < 0.3, rep["density"]
    rows = torch.randperm(layout.num_tokens, generator=torch.Generator().manual_seed(0))[:64]
    ref = masked_reference(q[:, :, rows], k, v, sta_mask(layout, plan["tile"], plan["window_tiles"], rows=rows))
    torch.testing.assert_close(out[:, :, rows], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "grid", [README_GRIDS[0], pytest.param(README_GRIDS[1], marks=pytest.mark.slow)],
    ids=lambda g: "x".join(map(str, g)),
)
def test_readme_config_at_density_one_is_dense(grid):
    """Density 1 hands the call back (stock attention runs); through the kernel (a threshold that never skips) the
    full window equals dense attention within atol 1e-5."""
    layout = TokenLayout(*grid)
    q, k, v = (torch.randn(1, 1, layout.num_tokens, 8) for _ in range(3))
    method = SparseVideoConfig(pattern="tiles", density=1.0).build()
    assert method(q, k, v, layout) is None and method.report()["handed_back"] == {"density-1": 1}
    kernel = SparseVideoConfig(pattern="tiles", density=1.0, threshold=1e6, backend="torch").build()
    torch.testing.assert_close(kernel(q, k, v, layout), F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=0)
    assert kernel.report()["effective_density"] == 1.0


# ---------------------------------------------------------------------------------------------------- heads
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
    assert method.report()["temporal_head_fraction"] == 0.5
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
    assert method.report()["temporal_head_fraction"] == 0.0 and torch.isfinite(out).all()
    coord = head_coords(layout.grid, "spatial")
    bm = band_block_mask(coord, band_width_for_density(coord, 16, 0.3), 16, layout.num_tokens)
    tok = block_token_mask(bm, torch.arange(layout.num_tokens), 16)  # text-last order
    order = torch.cat([torch.arange(6, 70), torch.arange(6)])  # text-last position of each original token
    pos = inverse_permutation(order)
    tok = tok[pos][:, pos]
    torch.testing.assert_close(out, masked_reference(q, k, v, tok), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- topk
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
    assert method.report()["compensated_fraction"] > 0.5


def test_topk_mass_and_text_global():
    layout = TokenLayout(4, 8, 8, text_tokens=7, text_first=True)
    q, k, v = (torch.randn(1, 2, layout.num_tokens, 16) for _ in range(3))
    method = SparseVideoConfig(pattern="topk", density=0.3, topk_mass=0.5, block_size=16, tile=(1, 4, 4)).build()
    out = method(q, k, v, layout)
    assert torch.isfinite(out).all()
    # Text queries attend to everything and are not rectified: exact dense rows.
    torch.testing.assert_close(out[:, :, :7], F.scaled_dot_product_attention(q, k, v)[:, :, :7], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------- density
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_density_one_is_handed_back(pattern):
    layout = TokenLayout(3, 4, 4, text_tokens=3, text_first=True)
    q, k, v = (torch.randn(2, 2, layout.num_tokens, 24) for _ in range(3))
    method = SparseVideoConfig(pattern=pattern, density=1.0, tile=(1, 2, 2), block_size=8).build()
    out = method(q, k, v, layout)
    if pattern == "threshold":  # no density budget: it runs the kernel (nothing is skipped on these inputs)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=0)
        assert method.report()["sparse_calls"] == 1
    else:
        assert out is None and method.report()["handed_back"] == {"density-1": 1}


def test_full_budget_through_kernel_equals_dense():
    """Budgets covering every block go through the kernel (and rectification) and still equal dense."""
    layout = TokenLayout(3, 4, 4, text_tokens=3, text_first=True)
    q, k, v = (torch.randn(2, 2, layout.num_tokens, 24) for _ in range(3))
    dense = F.scaled_dot_product_attention(q, k, v)
    topk = SparseVideoConfig(pattern="topk", density=0.99, block_size=8, backend="torch").build()
    torch.testing.assert_close(topk(q, k, v, layout), dense, atol=1e-5, rtol=0)
    thr = SparseVideoConfig(pattern="threshold", threshold=1e6, block_size=8, backend="torch").build()
    torch.testing.assert_close(thr(q, k, v, layout), dense, atol=1e-5, rtol=0)
    assert thr.report()["effective_density"] == 1.0


def test_threshold_skips_and_reports_effective_density():
    layout = TokenLayout(4, 8, 8)
    q, k, v = _planted_blocks(layout, (1, 4, 4), noise=0.05)
    q = q * 3
    method = SparseVideoConfig(pattern="threshold", threshold=4.0, block_size=16, tile=(1, 4, 4)).build()
    out = method(q, k, v, layout)
    rep = method.report()
    assert rep["density"] == 1.0 and rep["effective_density"] < 0.9
    assert rel_err(out, F.scaled_dot_product_attention(q, k, v)) < 0.05
    tiles = SparseVideoConfig(pattern="tiles", tile=(1, 4, 4), window_tiles=(3, 1, 1), threshold=4.0).build()
    tiles(q, k, v, layout)
    assert tiles.report()["effective_density"] <= tiles.report()["density"]


# ---------------------------------------------------------------------------------------------------- schedule, report
def test_steps_and_layers_belong_to_the_schedule():
    for name in ("dense_warmup_steps", "dense_first_layers", "dense_last_layers"):
        with pytest.raises(TypeError, match=name):
            SparseVideoConfig(**{name: 1})
    assert SparseVideoConfig().default_schedule() == attnplug.Schedule(warmup_steps=0.1)


def test_report_per_layer_and_step_and_reset():
    layout = TokenLayout(3, 4, 4)
    q, k, v = (torch.randn(1, 2, layout.num_tokens, 8) for _ in range(3))
    method = SparseVideoConfig(pattern="tiles", tile=(1, 2, 2), window_tiles=(1, 1, 1)).build()
    for step, layer in itertools.product(range(2), range(3)):
        method(q, k, v, layout, None, CallInfo(layer_index=layer, num_layers=3, step=step))
    method(q, k, v, layout, torch.ones(1, 1, 48, 48, dtype=torch.bool), CallInfo(layer_index=0, step=1))
    rep = method.report()
    assert rep["calls"] == 7 and rep["sparse_calls"] == 6 and rep["handed_back"] == {"mask-not-key-padding": 1}
    assert set(rep["by_layer"]) == {0, 1, 2} and rep["by_step"][1]["calls"] == 3
    assert rep["by_layer"][0]["density"] == pytest.approx(rep["density"]) == pytest.approx(1 / 12)  # 1 of 12 tiles
    method.reset()
    assert method.report()["calls"] == 0 and method.report()["plans"] == {}


def test_memory_is_bounded_over_1000_calls():
    """1000 calls over 20 layouts (more than the plan cache holds): the cache stays at its bound and the summary
    does not grow."""
    method = SparseVideoConfig(pattern="tiles", tile=(1, 2, 2), window_tiles=(1, 1, 1), backend="torch").build()
    layouts = [TokenLayout(2, 4, 4, text_tokens=t) for t in range(20)]
    xs = {lay: torch.randn(1, 1, lay.num_tokens, 4) for lay in layouts}

    def calls(start, stop):
        for i in range(start, stop):
            lay = layouts[(i // 10) % len(layouts)]
            method(xs[lay], xs[lay], xs[lay], lay, None, CallInfo(layer_index=i % 4, step=i % 7))

    tracemalloc.start()
    try:
        calls(0, 500)  # warm-up: the plan cache fills, torch and Python settle their caches
        size, (before, _) = len(repr(method.report())), tracemalloc.get_traced_memory()
        calls(500, 1000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(method._plans) <= 16
    assert len(repr(method.report())) <= size + 64 and method.report()["calls"] == 1000
    assert grown < 64 * 1024, grown  # one record per call would take > 300 KB (worker-pool bookkeeping: ~15 KB)


@pytest.mark.parametrize("pattern", ["tiles", "heads", "topk"])
def test_two_threads_give_single_thread_results(pattern):
    """Two threads calling one method on different inputs and layouts get exactly the single-thread outputs."""
    cfg = SparseVideoConfig(pattern=pattern, density=0.3, tile=(1, 4, 4), block_size=16, num_sampled_rows=16,
                            backend="torch")
    layouts = [TokenLayout(4, 8, 8, text_tokens=3), TokenLayout(3, 8, 12)]
    gen = torch.Generator().manual_seed(0)
    inputs = [[tuple(torch.randn(2, 2, lay.num_tokens, 16, generator=gen) for _ in range(3)) for _ in range(6)]
              for lay in layouts]
    info = CallInfo(layer_index=1, step=2)
    single = cfg.build()
    expected = [[single(*x, lay, None, info) for x in xs] for lay, xs in zip(layouts, inputs)]
    shared = cfg.build()
    got = run_concurrently(
        [lambda t=t: [shared(*x, layouts[t], None, info) for _ in range(3) for x in inputs[t]] for t in range(2)])
    for t in range(2):
        assert len(got[t]) == 18
        for i, out in enumerate(got[t]):
            assert torch.equal(out, expected[t][i % 6]), (t, i)
    assert shared.report()["calls"] == 36


# ---------------------------------------------------------------------------------------------------- bad input
def test_unknown_pattern_lists_valid_ones():
    with pytest.raises(ValueError, match="'tiles', 'heads', 'topk', 'threshold'.*'blocks'"):
        SparseVideoConfig(pattern="blocks")


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, True, "0.2"])
def test_density_out_of_range(density):
    with pytest.raises(ValueError, match=r"SparseVideoConfig.density must be (a number )?in \(0, 1\]"):
        SparseVideoConfig(density=density)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tile=(2, 0, 2)), "tile"),
        (dict(window_tiles=(1, 2, 3, 4)), "window_tiles"),
        (dict(stride_tiles=0), "stride_tiles"),
        (dict(tile_fit="stretch"), "tile_fit"),
        (dict(rectify="yes"), "rectify"),
        (dict(topk_mass=1.2), "topk_mass"),
        (dict(threshold=-1.0), "threshold"),
        (dict(seed=-1), "seed"),
        (dict(block_size=0), "block_size"),
        (dict(num_sampled_rows=2.5), "num_sampled_rows"),
        (dict(backend="cuda"), "backend"),
    ],
)
def test_bad_config_fields(kwargs, match):
    with pytest.raises(ValueError, match=f"SparseVideoConfig.{match}"):
        SparseVideoConfig(**kwargs)


def test_grid_arguments_follow_the_package_rule():
    """An int or a 2-tuple is spatial (height, width); the frames entry defaults per argument."""
    cfg = SparseVideoConfig(tile=(8, 8), window_tiles=3, stride_tiles=2)
    assert (cfg.tile, cfg.window_tiles, cfg.stride_tiles) == ((1, 8, 8), (None, 3, 3), (1, 2, 2))
    assert SparseVideoConfig(tile=4).tile == (1, 4, 4) and SparseVideoConfig(tile=(2, 4, 4)).tile == (2, 4, 4)
    # window None entries span the whole dimension: (None, 1, 1) over 4 frames = all frames of the tile column.
    layout = TokenLayout(4, 4, 4)
    q, k, v = (torch.randn(1, 1, 64, 8) for _ in range(3))
    method = SparseVideoConfig(tile=(2, 2), window_tiles=(None, 1, 1), backend="torch").build()
    out = method(q, k, v, layout)
    assert method.report()["plans"]["4x4x4"]["window_tiles"] == (4, 1, 1)
    torch.testing.assert_close(out, masked_reference(q, k, v, sta_mask(layout, (1, 2, 2), (4, 1, 1))), atol=1e-5,
                               rtol=1e-5)


def test_tile_not_dividing_layout():
    layout = TokenLayout(3, 6, 8)
    q = torch.randn(1, 1, layout.num_tokens, 8)
    with pytest.raises(ValueError, match=r"SparseVideoConfig.tile=\(2, 4, 4\) does not divide the token grid "
                                         r"\(3, 6, 8\).*frames 3 % 2"):
        SparseVideoConfig(pattern="tiles", tile=(2, 4, 4), density=0.3, tile_fit="error").build()(q, q, q, layout)
    method = SparseVideoConfig(pattern="tiles", tile=(2, 4, 4), density=0.3).build()  # tile_fit="pad" default
    out = method(q, q, q, layout)
    plan = method.report()["plans"]["3x6x8"]
    assert torch.isfinite(out).all() and plan["tile"] == (2, 4, 4) and plan["tiles"] == (2, 2, 2)
    assert plan["padded_positions"] == 2 * 2 * 2 * 32 - 3 * 6 * 8
    torch.testing.assert_close(out, masked_reference(q, q, q, sta_mask(layout, (2, 4, 4), plan["window_tiles"])),
                               atol=1e-5, rtol=1e-5)


def test_tile_fit_shrink_is_explicit_and_logged(caplog):
    layout = TokenLayout(3, 6, 8)
    q = torch.randn(1, 1, layout.num_tokens, 8)
    method = SparseVideoConfig(pattern="tiles", tile=(2, 4, 4), density=0.3, tile_fit="shrink").build()
    with caplog.at_level(logging.WARNING, logger="attnplug"):
        method(q, q, q, layout)
    assert method.report()["plans"]["3x6x8"]["tile"] == (1, 3, 4)
    assert any("shrunk to (1, 3, 4)" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("pattern", ["tiles", "heads"])
def test_video_pattern_on_image_layout(pattern):
    layout = TokenLayout(1, 8, 8)
    q = torch.randn(1, 1, 64, 8)
    with pytest.raises(ValueError, match=r"SparseVideoConfig.pattern=.* needs a video token layout \(frames > 1\)"):
        SparseVideoConfig(pattern=pattern, tile=(1, 4, 4)).build()(q, q, q, layout)


def test_topk_works_on_image_layout():
    layout = TokenLayout(1, 8, 8)
    q, k, v = (torch.randn(1, 1, 64, 8) for _ in range(3))
    out = SparseVideoConfig(pattern="topk", block_size=16, tile=(1, 4, 4)).build()(q, k, v, layout)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs,layout,match",
    [
        (dict(tile_fit="error"), TokenLayout(121, 8, 8), r"SparseVideoConfig.tile=\(4, 4, 4\) does not divide"),
        (dict(pattern="heads"), TokenLayout(1, 8, 8), r"SparseVideoConfig.pattern='heads' needs a video"),
    ],
)
def test_impossible_config_fails_in_prepare(kwargs, layout, match):
    """``prepare`` (called at step 0, before the warm-up ends) raises without running anything."""
    method = SparseVideoConfig(**kwargs).build()
    with pytest.raises(ValueError, match=match):
        method.prepare(layout, CallInfo(step=0))
    assert method.report()["calls"] == 0


#: Latent token grids of the flagship video models (frames, height, width) after patching.
FLAGSHIP_GRIDS = {
    "wan-480p-81": (21, 30, 52), "wan-720p-81": (21, 45, 80), "hunyuanvideo-720p-129": (33, 45, 80),
    "cogvideox-480x720-49": (13, 30, 45), "ltx-704x480-161": (21, 15, 22), "wan2.2-ti2v-5b-704x1280-121": (31, 22, 40),
    "hunyuanvideo-544p-129": (33, 34, 60),
}


@pytest.mark.parametrize("pattern", list(PATTERNS))
@pytest.mark.parametrize("grid", list(FLAGSHIP_GRIDS.values()), ids=list(FLAGSHIP_GRIDS))
def test_every_default_plans_triton_blocks_on_flagship_grids(monkeypatch, grid, pattern):
    """Each pattern's default config passes the Triton kernel's block check at step 0 on every flagship grid, and
    the planned blocks are ones the kernel takes (tiles: the requested (4, 4, 4) tile, padded, in 64-slot blocks)."""
    pytest.importorskip("triton")
    from attnplug.kernels.block_sparse.triton import kernel_config

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    method = SparseVideoConfig(pattern=pattern, backend="triton").build()
    layout = TokenLayout(*grid)
    method.prepare(layout, CallInfo(step=0))
    block = method.pattern.block_for(grid, "cpu")
    kernel_config(128, block, block, torch.bfloat16, method.config.effective_threshold is not None)
    if pattern == "tiles":
        assert method.pattern.tile_for(grid) == (4, 4, 4) and block == 64


def test_triton_blocks_checked_in_prepare(monkeypatch):
    """With a threshold the kernel's tiles are the blocks: a 128-token tile fails at step 0 with the fix named."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    method = SparseVideoConfig(backend="triton", tile=(2, 8, 8), threshold=6.0).build()
    with pytest.raises(ValueError, match=r"SparseVideoConfig.tile: tile=\(2, 8, 8\) on the token grid "
                                         r"\(21, 30, 52\) gives 128-token blocks"):
        method.prepare(TokenLayout(21, 30, 52), CallInfo(step=0))
    SparseVideoConfig(backend="triton", threshold=6.0).build().prepare(TokenLayout(21, 30, 52), CallInfo(step=0))


def test_impossible_config_fails_before_the_first_step(tmp_path):
    pipe = attnplug.testing.tiny_pipeline("wan", str(tmp_path))
    steps = []
    cfg = SparseVideoConfig(pattern="tiles", tile=(4, 4, 4), tile_fit="error")
    with attnplug.applied(pipe, cfg, schedule=attnplug.Schedule(warmup_steps=2)):
        with pytest.raises(ValueError, match=r"SparseVideoConfig.tile=\(4, 4, 4\) does not divide"):
            pipe("a cat", height=64, width=64, num_frames=9, num_inference_steps=3, output_type="latent",
                 callback_on_step_end=lambda p, i, t, kw: steps.append(i) or kw)
    assert steps == []


# ---------------------------------------------------------------------------------------------------- tiny models
def _config(pattern):
    return SparseVideoConfig(pattern=pattern, density=0.3, tile=(1, 4, 4), block_size=16, num_sampled_rows=16)


def _run_tiny(family, pattern):
    """Apply ``pattern`` to a tiny ``family`` model for one forward (every step); return (stats, method)."""
    model, inputs = tiny_model(family, frames=3, height=16, width=16)
    method = _config(pattern).build()
    with attnplug.applied(model, method, schedule=attnplug.Schedule()):
        out = forward(model, inputs)
        stats = attnplug.stats(model)
    assert torch.isfinite(out).all()
    assert stats["self"]["method"] > 0, stats
    return stats, method


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_tiny_video_models_every_pattern(family, pattern):
    stats, method = _run_tiny(family, pattern)
    rep = method.report()
    assert rep["sparse_calls"] == stats["self"]["method"] > 0
    assert stats["method_report"]["sparse_calls"] == rep["sparse_calls"]
    if pattern != "threshold":
        assert rep["density"] < 1.0


def test_standalone_processor_on_tiny_wan():
    model, inputs = tiny_model("wan", frames=3, height=16, width=16)
    proc = attnplug.AttnplugProcessor(_config("tiles"), layout=TokenLayout(3, 8, 8))
    model.set_attn_processor(proc)
    out = forward(model, inputs)
    assert torch.isfinite(out).all()
    assert isinstance(proc.method, SparseVideoMethod)
    assert proc.method.report()["sparse_calls"] == 2 and proc.method.report()["pattern"] == "tiles"


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
    assert method.report()["sparse_calls"] == 1


def test_key_padding_mask_tiles_matches_brute_force():
    layout = TokenLayout(4, 8, 8, text_tokens=5)
    q, k, v = (torch.randn(2, 2, layout.num_tokens, 16) for _ in range(3))
    keep = _padding_mask(layout, 2, [2, 0])
    cfg = SparseVideoConfig(pattern="tiles", tile=(2, 2, 2), window_tiles=(1, 3, 3), backend="torch")
    out = cfg.build()(q, k, v, layout, keep[:, None, None, :])
    for b in range(2):
        tile_mask = sta_mask(layout, cfg.tile, cfg.window_tiles) & keep[b][None, :]
        ref = masked_reference(q[b:b + 1], k[b:b + 1], v[b:b + 1], tile_mask)
        torch.testing.assert_close(out[b:b + 1], ref, atol=1e-5, rtol=1e-5)
    # Padding on image tokens is honoured exactly too (those keys are left out); other masks are handed back.
    pads_image = keep.clone()
    pads_image[0, 0] = False
    out = cfg.build()(q, k, v, layout, pads_image[:, None, None, :])
    ref = masked_reference(q[:1], k[:1], v[:1], sta_mask(layout, cfg.tile, cfg.window_tiles) & pads_image[0][None, :])
    torch.testing.assert_close(out[:1], ref, atol=1e-5, rtol=1e-5)
    assert cfg.build()(q, k, v, layout, torch.zeros(2, 1, 1, layout.num_tokens)) is None


def test_cross_attention_shapes_are_handed_back():
    layout = TokenLayout(3, 4, 4)
    q = torch.randn(1, 2, 48, 8)
    method = SparseVideoConfig(pattern="tiles", tile=(1, 2, 2)).build()
    assert method(q, torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8), layout) is None
    assert method.last_reason() == "cross-attention"


@pytest.mark.parametrize("family,pattern", [("hunyuanvideo", "tiles"), ("ltx", "topk")])
def test_tiny_hunyuanvideo_and_ltx(family, pattern):
    _, method = _run_tiny(family, pattern)
    rep = method.report()
    assert rep["calls"] == rep["sparse_calls"] > 0
