"""Block patterns of the sparse video method checked against brute-force definitions on small layouts."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from attnplug.layout import TokenLayout
from attnplug.methods.patterns import (
    PATTERNS,
    Plan,
    PlanCache,
    add_global_blocks,
    apply_rectification,
    band_block_mask,
    band_width_for_density,
    block_token_mask,
    fit_tile,
    gapr_compensable,
    head_coords,
    head_permutation,
    inverse_permutation,
    locality_priority,
    lut_from_block_mask,
    pool_blocks,
    pooled_block_probs,
    profile_heads,
    rectification_terms,
    select_blocks,
    tile_block_mask,
    tile_grid,
    tile_permutation,
    tile_window_for_density,
)


def _clamped_window(a: int, length: int, w: int, s: int = 1) -> range:
    """NATTEN's window: the stride group's centre leads (the right-hand one for even strides), clamped inward."""
    leader = min((a // s) * s + s // 2, length - 1)
    start = min(max(leader - w // 2, 0), length - w)
    return range(start, start + w)


@pytest.mark.parametrize(
    "grid,tile,window,stride",
    [
        ((4, 6, 8), (2, 3, 2), (1, 1, 3), (1, 1, 1)),
        ((3, 4, 4), (1, 2, 2), (3, 1, 2), (1, 1, 1)),
        ((2, 4, 6), (1, 2, 3), (2, 2, 2), (1, 1, 1)),
        ((4, 6, 8), (1, 2, 2), (3, 3, 3), (2, 1, 3)),
        ((4, 8, 8), (1, 2, 1), (2, 2, 4), (2, 2, 4)),  # even strides: the right-hand centre leads
    ],
)
def test_tiles_lut_matches_brute_force(grid, tile, window, stride):
    tiles = tile_grid(grid, tile)
    perm = tile_permutation(grid, tile)
    pos = inverse_permutation(perm)
    block = math.prod(tile)
    mask = tile_block_mask(tiles, window, stride=stride)
    # Each block is exactly one tile.
    f, h, w = grid
    coords = [(i // (h * w), (i // w) % h, i % w) for i in range(f * h * w)]
    tile_of = [tuple(c // t for c, t in zip(cc, tile)) for cc in coords]
    for b in range(math.prod(tiles)):
        members = {tile_of[int(perm[j])] for j in range(b * block, (b + 1) * block)}
        assert len(members) == 1
    token = block_token_mask(mask, pos, block)
    n = f * h * w
    expect = torch.zeros(n, n, dtype=torch.bool)
    for qi, ki in itertools.product(range(n), range(n)):
        tq, tk = tile_of[qi], tile_of[ki]
        expect[qi, ki] = all(tk[d] in _clamped_window(tq[d], tiles[d], window[d], stride[d]) for d in range(3))
    assert torch.equal(token, expect)
    # Every query tile sees exactly prod(window) key tiles (inward windows).
    assert torch.all(mask.sum(-1) == math.prod(window))
    # The LUT lists exactly the mask.
    lut = lut_from_block_mask(mask[None, None], block)
    assert torch.equal(lut.to_block_mask(mask.shape[-1])[0, 0], mask)


def test_tile_grid_error_names_dimension_and_fit_tile():
    with pytest.raises(ValueError, match=r"SparseVideoConfig.tile=\(2, 4, 4\).*height 6 % 4 = 2.*tile_fit='shrink'"):
        tile_grid((4, 6, 8), (2, 4, 4))
    assert fit_tile((4, 6, 7), (4, 4, 4)) == (4, 3, 1)
    assert fit_tile((2, 6, 8), (4, 4, 4)) == (2, 3, 4)
    assert fit_tile((121, 8, 8), (4, 4, 4)) == (1, 4, 4)
    assert fit_tile((21, 30, 52), (4, 4, 4)) == (3, 3, 4)


def test_tile_window_for_density():
    assert tile_window_for_density((4, 8, 8), 1.0) == (4, 8, 8)
    win = tile_window_for_density((4, 8, 8), 0.1, (4, 4, 4))
    d = math.prod(win) / 256
    assert 0.05 <= d <= 0.12
    with pytest.raises(ValueError, match="window"):
        tile_block_mask((2, 2, 2), (3, 1, 1))
    with pytest.raises(ValueError, match="stride"):
        tile_block_mask((2, 2, 2), (1, 1, 1), stride=(1, 2, 1))


@pytest.mark.parametrize("kind", ["spatial", "temporal"])
@pytest.mark.parametrize("width,block,text", [(0, 8, 0), (1, 12, 5), (3, 16, 9)])
def test_band_mask_matches_brute_force(kind, width, block, text):
    grid = (4, 3, 5)
    f, h, w = grid
    n_img = f * h * w
    n = n_img + text
    perm = torch.cat([head_permutation(grid, kind), torch.arange(n_img, n)])
    pos = inverse_permutation(perm)
    coord = head_coords(grid, kind)
    # In the permuted order, the band coordinate is frame (spatial) or spatial position (temporal) of the token.
    orig = perm[:n_img]
    expected_coord = orig // (h * w) if kind == "spatial" else orig % (h * w)
    assert torch.equal(coord, expected_coord)
    mask = band_block_mask(coord, width, block, n)
    token = block_token_mask(mask, pos, block)
    m = math.ceil(n / block)
    # Brute force, block level: coordinate sets of each block in the permuted order.
    sets = [[int(coord[j]) for j in range(i * block, min(n_img, (i + 1) * block))] for i in range(m)]
    has_text = [any(j >= n_img for j in range(i * block, min(n, (i + 1) * block))) for i in range(m)]
    expect_blocks = torch.zeros(m, m, dtype=torch.bool)
    for i, j in itertools.product(range(m), range(m)):
        if has_text[i] or has_text[j]:
            expect_blocks[i, j] = True
        elif sets[i] and sets[j]:
            expect_blocks[i, j] = min(sets[j]) <= max(sets[i]) + width and max(sets[j]) >= min(sets[i]) - width
    assert torch.equal(mask, expect_blocks)
    # Token level: every image pair within the band is allowed (the mask covers its definition).
    ci = torch.empty(n_img, dtype=torch.long)
    ci[orig] = coord
    near = (ci[:, None] - ci[None, :]).abs() <= width
    assert bool(token[:n_img, :n_img][near].all())
    if text:
        assert bool(token[n_img:].all()) and bool(token[:, n_img:].all())


def test_band_width_for_density_is_largest_within_budget():
    coord = head_coords((8, 4, 4), "spatial")
    n = coord.numel()

    def dens(width):
        return band_block_mask(coord, width, 16, n).float().mean().item()

    for density in (0.1, 0.3, 0.6):
        wd = band_width_for_density(coord, 16, density)

        assert dens(wd) <= density + 1e-9 or wd == 0
        assert dens(wd + 1) > density


def test_profile_heads_picks_planted_patterns():
    grid = (4, 4, 4)
    f, h, w = grid
    n = f * h * w
    d = 16
    frame = torch.arange(n) // (h * w)
    position = torch.arange(n) % (h * w)
    frame_code = torch.nn.functional.one_hot(frame, d).float() * 6
    pos_code = torch.nn.functional.normalize(torch.randn(h * w, d), dim=-1)[position] * 6
    q = torch.stack([frame_code, pos_code])[None] + 0.05 * torch.randn(1, 2, n, d)  # head 0 spatial, head 1 temporal
    k = q.clone()
    v = torch.randn(1, 2, n, d)
    masks = []
    for kind in ("spatial", "temporal"):
        perm = head_permutation(grid, kind)
        bm = band_block_mask(head_coords(grid, kind), 0, 16, n)
        masks.append(block_token_mask(bm, inverse_permutation(perm), 16))
    rows = torch.arange(0, n, 5)
    choice, err = profile_heads(q, k, v, [mk[rows] for mk in masks], rows, d**-0.5)
    assert choice.tolist() == [0, 1]
    assert err.shape == (2, 2)


def _brute_pool(x, block):
    b, h, n, d = x.shape
    m = math.ceil(n / block)
    return torch.stack([x[:, :, i * block: min(n, (i + 1) * block)].mean(2) for i in range(m)], 2)


def test_pool_and_probs_match_loops():
    x = torch.randn(2, 3, 37, 8)
    mean, mad, sizes = pool_blocks(x, 8)
    assert torch.allclose(mean, _brute_pool(x, 8), atol=1e-6)
    dev = torch.stack([(x[:, :, i * 8: min(37, i * 8 + 8)] - mean[:, :, i, None]).abs().mean(2) for i in range(5)], 2)
    assert torch.allclose(mad, dev, atol=1e-6)
    assert sizes.tolist() == [8, 8, 8, 8, 5]
    k = torch.randn(2, 3, 37, 8)
    km, _, ks = pool_blocks(k, 8)
    p = pooled_block_probs(mean, km, ks, 0.3)
    for b, hh, i in itertools.product(range(2), range(3), range(5)):
        logits = torch.tensor([0.3 * float(mean[b, hh, i] @ km[b, hh, j]) + math.log(ks[j]) for j in range(5)])
        assert torch.allclose(p[b, hh, i], torch.softmax(logits, 0), atol=1e-5)


@pytest.mark.parametrize("mass", [None, 0.6])
def test_select_blocks_matches_sorted_loop(mass):
    probs = torch.softmax(torch.randn(2, 2, 6, 9) * 2, -1)
    forced = torch.zeros(6, 9, dtype=torch.bool)
    forced[torch.arange(6), torch.arange(6)] = True
    forced[:, 8] = True
    budget = 4
    sel = select_blocks(probs, budget, forced, mass)
    for b, h, i in itertools.product(range(2), range(2), range(6)):
        row = probs[b, h, i].tolist()
        f = [j for j in range(9) if forced[i, j]]
        rest = sorted((j for j in range(9) if not forced[i, j]), key=lambda j: -row[j])
        ranked = f + rest
        keep = set(f)
        acc = 0.0
        for r, j in enumerate(ranked):
            if r >= budget or (mass is not None and acc >= mass):
                break
            keep.add(j)
            acc += row[j]
        assert {j for j in range(9) if sel[b, h, i, j]} == keep


def test_rectification_terms_match_formula():
    probs = torch.softmax(torch.randn(1, 2, 4, 4), -1)
    sel = torch.rand(1, 2, 4, 4) > 0.5
    comp = torch.rand(1, 2, 4, 4) > 0.3
    vp = torch.randn(1, 2, 4, 3)
    r, c = rectification_terms(probs, sel, comp, vp)
    for h, i in itertools.product(range(2), range(4)):
        js = [j for j in range(4) if not sel[0, h, i, j] and comp[0, h, i, j]]
        assert math.isclose(float(r[0, h, i]), 1 - sum(float(probs[0, h, i, j]) for j in js), abs_tol=1e-6)
        want = sum((probs[0, h, i, j] * vp[0, h, j] for j in js), torch.zeros(3))
        assert torch.allclose(c[0, h, i], want, atol=1e-6)
    out = torch.randn(1, 2, 10, 3)
    rect = apply_rectification(out.clone(), r, c, 3)  # in place on its argument
    assert torch.allclose(rect[0, 1, 7], out[0, 1, 7] * r[0, 1, 2] + c[0, 1, 2], atol=1e-6)


def test_gapr_gain_vs_error():
    # Tight clusters: pooling is exact enough -> compensable; pure noise: pooling error dominates -> not.
    centres = torch.randn(1, 1, 4, 16) * 2
    tight = centres.repeat_interleave(8, 2) + 0.01 * torch.randn(1, 1, 32, 16)
    qm, qd, _ = pool_blocks(tight, 8)
    assert gapr_compensable(qm, qd, qm, qd).float().mean() > 0.9
    noise = torch.randn(1, 1, 512, 16)
    nm, nd, _ = pool_blocks(noise, 16)
    assert gapr_compensable(nm, nd, nm, nd).float().mean() < 0.2


def test_global_blocks_and_priority_lut_order():
    mask = torch.zeros(5, 5, dtype=torch.bool)
    g = add_global_blocks(mask, n_image=34, n_total=40, block=8)  # block 4 holds tokens 32..39: text from 34
    assert g[4].all() and g[:, 4].all() and not g[:4, :4].any()
    assert torch.equal(add_global_blocks(mask, 40, 40, 8), mask)
    full = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    lut = lut_from_block_mask(full, 8, locality_priority(5)[None, None])
    assert lut.indices[0, 0, 2, :3].tolist() in ([2, 1, 3], [2, 3, 1])
    assert lut.indices[0, 0, 0].tolist() == [0, 1, 2, 3, 4]


def test_even_stride_differs_from_left_hand_leader():
    """Window 2, stride 2 over 4 tiles: NATTEN's leaders give windows [0, 2), [0, 2), [2, 4), [2, 4)."""
    mask = tile_block_mask((1, 1, 4), (1, 1, 2), stride=(1, 1, 2))
    assert [row.nonzero().flatten().tolist() for row in mask] == [[0, 1], [0, 1], [2, 3], [2, 3]]


def test_every_pattern_plans_and_runs():
    """Each pattern implements the protocol: ``plan`` gives a :class:`Plan` for the layout, ``run`` an output of
    the input's shape whose density lies in (0, 1]."""
    from attnplug.methods.base import CallInfo
    from attnplug.methods.sparse_video import SparseVideoConfig

    layout = TokenLayout(2, 4, 8, text_tokens=3)
    q, k, v = (torch.randn(1, 2, layout.num_tokens, 8) for _ in range(3))
    for name, cls in PATTERNS.items():
        cfg = SparseVideoConfig(pattern=name, density=0.5, tile=(1, 2, 4), block_size=8, num_sampled_rows=8)
        pattern = cls(cfg)
        plan = pattern.plan(layout, "cpu")
        assert isinstance(plan, Plan) and plan.layout == layout and plan.block == pattern.block_for(layout.grid)
        res = pattern.run(q, k, v, plan, CallInfo(scale=8**-0.5))
        assert res.out.shape == q.shape and 0 < res.density <= 1 and torch.isfinite(res.out).all(), name


def test_plan_cache_is_bounded_and_keyed_by_device():
    cache = PlanCache(maxsize=2)
    built = []

    def build(layout, device):
        built.append((layout, str(device)))
        return Plan(layout=layout, block=1)

    a, b, c = (TokenLayout(2, 2, n) for n in (1, 2, 3))
    cache.get(a, "cpu", build)
    cache.get(a, torch.device("cpu"), build)  # same key
    cache.get(b, "cpu", build)
    cache.get(a, "cpu", build)  # a is now the most recent
    cache.get(c, "cpu", build)  # evicts b
    cache.get(a, "meta", build)  # another device: another plan
    assert len(cache) == 2 and built == [(a, "cpu"), (b, "cpu"), (c, "cpu"), (a, "meta")]
