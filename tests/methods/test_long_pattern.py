"""The ``long`` sparse video pattern: a temporal window around every query frame plus anchor frames, text global.

Checked against a dense masked SDPA built from the stated frame rule (not from the plan) and against the block-sparse
reference on the plan's table, on tiny grids, in float32 (tolerance 1e-5 absolute).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnplug import SparseVideoConfig, TokenLayout
from attnplug.kernels import block_sparse_reference
from attnplug.methods import CallInfo
from attnplug.methods.patterns import LongPattern, anchor_positions, frame_slots, long_frame_mask
from attnplug.methods.patterns.base import pattern_keep, take

ATOL = 1e-5  # float32


def _stated_frame_mask(frames: int, window: int, anchors: int) -> torch.Tensor:
    """The documented rule, written out: start = clamp(f - W // 2, 0, F - W); anchors floor(i * F / A)."""
    mask = torch.zeros(frames, frames, dtype=torch.bool)
    count = min(anchors, frames)
    anchor_set = {i * frames // count for i in range(count)}
    for f in range(frames):
        start = min(max(f - window // 2, 0), frames - window)
        for g in range(frames):
            mask[f, g] = start <= g < start + window or g in anchor_set
    return mask


def _dense_masked(q, k, v, layout: TokenLayout, window: int, anchors: int, keep=None):
    """SDPA with the token mask of the stated rule, in the layout's own order (text first or last)."""
    n, hw = layout.num_tokens, layout.height * layout.width
    img = torch.zeros(n, dtype=torch.bool)
    img[layout.image_slice()] = True
    frame = torch.full((n,), -1)
    frame[layout.image_slice()] = torch.arange(layout.image_tokens) // hw
    fm = _stated_frame_mask(layout.frames, window, anchors)
    allowed = ~img[:, None] | ~img[None, :] | fm[frame.clamp(min=0)][:, frame.clamp(min=0)]
    mask = allowed[None, None]
    if keep is not None:
        mask = mask & keep[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.masked_fill(~mask.any(-1, keepdim=True), 0.0)


@pytest.mark.parametrize("frames,window,anchors", [(9, 3, 2), (8, 4, 3), (10, 1, 1), (7, 5, 0), (12, 4, 4)])
def test_frame_mask_is_the_stated_rule(frames, window, anchors):
    mask = long_frame_mask(frames, window, anchors)
    assert torch.equal(mask, _stated_frame_mask(frames, window, anchors))
    window_only = long_frame_mask(frames, window, 0)
    assert torch.all(window_only.sum(-1) == window)  # inward windows: exactly W frames each
    for f in range(frames):  # plus the anchors outside the window
        outside = sum(1 for a in anchor_positions(frames, anchors) if not window_only[f, a])
        assert int(mask[f].sum()) == window + outside
    assert anchor_positions(frames, anchors)[:1] == ((0,) if anchors else ())


@pytest.mark.parametrize(
    "layout,window,anchors,batch,padded",
    [
        (TokenLayout(9, 3, 4, text_tokens=5, text_first=True), 3, 2, 2, False),
        (TokenLayout(9, 3, 4, text_tokens=5, text_first=False), 4, 3, 2, True),
        (TokenLayout(10, 2, 3), 3, 1, 1, False),
        (TokenLayout(8, 2, 2, text_tokens=3, text_first=True), 2, 2, 3, True),
    ],
)
@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("gpu_slots", [False, True])
def test_long_matches_dense_masked_and_block_reference(monkeypatch, layout, window, anchors, batch, padded, backend,
                                                       gpu_slots):
    """Text first/last, batch > 1, key padding on text, and the GPU kernels' per-frame padding (slots rounded up)."""
    if gpu_slots:  # plan as for Triton/flex (frames padded to whole 16-slot units), run on the CPU backends
        monkeypatch.setattr(LongPattern, "_device_kernel", lambda self, device: True)
    cfg = SparseVideoConfig(pattern="long", window_frames=window, anchor_frames=anchors, backend=backend)
    method = cfg.build()
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, 2, layout.num_tokens, 16, generator=gen) for _ in range(3))
    keep = None
    if padded:  # the last two text tokens of batch entry 0 are padding
        keep = torch.ones(batch, layout.num_tokens, dtype=torch.bool)
        text = layout.text_slice()
        keep[0, text.stop - 2: text.stop] = False
    mask = None if keep is None else keep[:, None, None, :]
    out = method(q, k, v, layout, mask)
    assert out is not None and out.shape == q.shape
    torch.testing.assert_close(out, _dense_masked(q, k, v, layout, window, anchors, keep), atol=ATOL, rtol=0)
    plan = method._plan(layout, "cpu")
    assert (plan.perm is not None) == (gpu_slots and plan.block != layout.height * layout.width)
    qt, kt, vt = (take(layout.to_text_last(x), plan.perm) for x in (q, k, v))
    kk = pattern_keep(plan, None if keep is None else layout.to_text_last(keep, dim=-1))
    ref = take(block_sparse_reference(qt, kt, vt, plan.lut, kv_keep=kk), plan.inv)
    torch.testing.assert_close(out, layout.from_text_last(ref), atol=ATOL, rtol=0)
    rep = method.report()
    assert rep["sparse_calls"] == 1 and 0 < rep["density"] < 1


def test_density_is_the_token_pair_fraction():
    layout = TokenLayout(12, 2, 3, text_tokens=4)
    plan = SparseVideoConfig(pattern="long", window_frames=4, anchor_frames=2).build()._plan(layout, "cpu")
    fm = _stated_frame_mask(12, 4, 2).double()
    hw, n = 6, layout.num_tokens
    pairs = fm.sum() * hw * hw + 2 * 4 * n - 4 * 4  # image pairs + text rows and columns (counted once)
    assert plan.density == pytest.approx(float(pairs) / n**2)
    assert plan.details["window_frames"] == 4 and plan.details["anchor_frames"] == (0, 6)


@pytest.mark.parametrize("window", [6, 9])
def test_window_covering_the_video_is_handed_back(window):
    layout = TokenLayout(6, 2, 2, text_tokens=2)
    q = torch.randn(1, 1, layout.num_tokens, 8)
    method = SparseVideoConfig(pattern="long", window_frames=window).build()
    assert method(q, q, q, layout) is None
    assert method.last_reason() == "window-covers-grid"
    assert method.report()["handed_back"] == {"window-covers-grid": 1}


def test_window_comes_from_window_frames_then_training_length_then_density():
    pattern = SparseVideoConfig(pattern="long", window_frames=5, train_latent_frames=21).build().pattern
    assert pattern.window_for(84) == (5, "window_frames")
    pattern = SparseVideoConfig(pattern="long", train_latent_frames=21).build().pattern
    assert pattern.window_for(84) == (21, "train_latent_frames")
    pattern = SparseVideoConfig(pattern="long", density=0.25).build().pattern
    window, source = pattern.window_for(84)
    assert source == "density" and long_frame_mask(84, window, 2).double().mean() <= 0.25 + 1 / 84


def test_flagship_4x_plan():
    """Wan 2.1 at 4x the training length: (84, 15, 26) tokens, window 21, anchors 0 and 42: density 0.27."""
    layout = TokenLayout(84, 15, 26)
    method = SparseVideoConfig(pattern="long", train_latent_frames=21).build()
    plan = method._plan(layout, "cpu")
    assert plan.block == 390 and plan.perm is None
    assert plan.density == pytest.approx(long_frame_mask(84, 21, 2).double().mean().item())
    assert 0.26 < plan.density < 0.28
    assert frame_slots(390, True) == 448 and frame_slots(16, True) == 16 and frame_slots(4, True) == 16
    assert frame_slots(390, True, 32) == 416 and frame_slots(390, False, 32) == 390


def test_gpu_frame_padding_unit_is_block_size(monkeypatch):
    monkeypatch.setattr(LongPattern, "_device_kernel", lambda self, device: True)
    layout = TokenLayout(84, 15, 26)
    for block_size, slots in ((64, 448), (32, 416)):
        plan = SparseVideoConfig(pattern="long", train_latent_frames=21, block_size=block_size).build()._plan(
            layout, "cpu")
        assert plan.block == slots and plan.details["padded_positions"] == 84 * (slots - 390)
        assert plan.keep is not None and int(plan.keep.sum()) == layout.num_tokens


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(window_frames=0), r"SparseVideoConfig.window_frames"),
        (dict(window_frames=2.5), r"SparseVideoConfig.window_frames"),
        (dict(train_latent_frames=True), r"SparseVideoConfig.train_latent_frames"),
        (dict(anchor_frames=-1), r"SparseVideoConfig.anchor_frames"),
        (dict(threshold=4.0), r"SparseVideoConfig.threshold=4.0 does not apply to pattern='long'"),
    ],
)
def test_bad_fields_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseVideoConfig(pattern="long", **kwargs)


def test_single_frame_layout_is_refused():
    method = SparseVideoConfig(pattern="long", window_frames=3).build()
    with pytest.raises(ValueError, match=r"SparseVideoConfig.pattern='long' needs a video token layout"):
        method.prepare(TokenLayout(1, 4, 4), CallInfo(step=0))
