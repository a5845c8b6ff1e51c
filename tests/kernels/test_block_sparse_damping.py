"""Block-sparse attention with UltraViCo damping flags (one per LUT entry): every backend equals a float64 dense
reference, i.e. ``damped_attention`` under the long pattern's token mask (far kept pairs damped, masked pairs left out,
text global), with and without key padding; the undamped call is unchanged; the damped Triton kernel compiles for
sm_80 / sm_90 (ahead of time, no GPU) and runs in the interpreter (TRITON_INTERPRET=1, set by conftest.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from kernel_testutil import prepare_backend, require_triton

from attnplug import SparseVideoConfig, TokenLayout
from attnplug.kernels.block_sparse import BlockLUT, block_sparse_attention
from attnplug.methods.patterns import long_frame_mask
from attnplug.methods.patterns.long import LongPattern, damped_frame_pairs
from attnplug.pipelines._long_video.damping import DampedLongMethod, damped_attention, far_pairs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _token_mask(layout: TokenLayout, window: int, anchors: int) -> torch.Tensor:
    """``(N, N)`` bool in ``layout``'s order: the long pattern's frame mask on image pairs, text global."""
    hw = layout.height * layout.width
    frame = torch.full((layout.num_tokens,), -1)
    start = layout.text_tokens if layout.text_first else 0
    frame[start: start + layout.image_tokens] = torch.arange(layout.image_tokens) // hw
    img = frame >= 0
    fm = long_frame_mask(layout.frames, window, anchors)
    f = frame.clamp(min=0)
    return ~img[:, None] | ~img[None, :] | fm[f][:, f]


def _reference64(q, k, v, layout, window, anchors, train, factor, scale, keep=None):
    """Float64 dense: scores, far kept image pairs' positive scores times ``factor``, the pattern's mask and the key
    padding ``keep (B, N)`` as -inf, softmax."""
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-1, -2) * scale
    far = far_pairs(layout, train)
    s = torch.where(far & (s > 0), s * factor, s)
    mask = _token_mask(layout, window, anchors)[None, None]
    if keep is not None:
        mask = mask & keep[:, None, None, :]
    return torch.softmax(s.masked_fill(~mask, -math.inf), dim=-1) @ v


def _plan(layout, window, anchors, train, factor, backend="torch"):
    cfg = SparseVideoConfig(pattern="long", window_frames=window, anchor_frames=anchors, backend=backend)
    return LongPattern(cfg, damping=(train, factor)).plan(layout, "cpu")


@pytest.mark.parametrize("frames,h,w,text,window,anchors,train,factor,padded", [
    (8, 2, 3, 0, 3, 2, 3, 0.5, False),   # clamped ends and anchors damped, no text
    (9, 3, 2, 5, 4, 2, 4, 0.9, True),    # text last, key padding on text and image keys
    (7, 2, 2, 3, 3, 1, 2, 0.7, True),    # window wider than L: pairs inside it damped too
    (12, 1, 3, 2, 4, 3, 4, 0.6, False),  # 4x the training length
])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_damped_lut_equals_float64_dense_reference(frames, h, w, text, window, anchors, train, factor, padded,
                                                  backend):
    layout = TokenLayout(frames, h, w, text_tokens=text)  # text last: the pattern's own order
    plan = _plan(layout, window, anchors, train, factor)
    assert plan.perm is None and plan.block == h * w  # CPU: one unpadded block per frame
    damp = plan.tables["damp"]
    gen = torch.Generator().manual_seed(frames)
    n, d = layout.num_tokens, 16
    q, k, v = (torch.randn(2, 3, n, d, generator=gen) * 1.5 for _ in range(3))
    keep = None
    if padded:
        keep = torch.ones(2, n, dtype=torch.bool)
        keep[1, -2:] = False  # the last keys (text, or the last frame's tokens) of batch entry 1
        keep[0, 1] = False
    scale = d ** -0.5
    out = block_sparse_attention(q, k, v, plan.lut, scale=scale, kv_keep=keep, backend=backend, damp=damp,
                                 damp_factor=factor)
    ref = _reference64(q, k, v, layout, window, anchors, train, factor, scale, keep)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)
    # the same as UltraViCo's dense damping under the pattern's token mask (float32)
    mask = _token_mask(layout, window, anchors)[None, None]
    if keep is not None:
        mask = mask & keep[:, None, None, :]
    dense = damped_attention(q, k, v, far_pairs(layout, train), factor, scale, mask)
    torch.testing.assert_close(out, dense, atol=2e-5, rtol=2e-5)
    plain = block_sparse_attention(q, k, v, plan.lut, scale=scale, kv_keep=keep, backend=backend)
    assert (out - plain).abs().max() > 1e-3  # the damping changed something


def test_plan_flags_exactly_the_kept_far_frame_pairs():
    layout = TokenLayout(10, 1, 2, text_tokens=3)
    plan = _plan(layout, 4, 2, 4, 0.9)
    m = plan.mask.shape[0]
    flags = plan.tables["damp"][0, 0]
    got = torch.zeros(m, m, dtype=torch.bool)
    for i in range(m):
        for j in range(int(plan.lut.counts[0, 0, i])):
            got[i, int(plan.lut.indices[0, 0, i, j])] = bool(flags[i, j])
    want = torch.zeros(m, m, dtype=torch.bool)
    want[:10, :10] = damped_frame_pairs(10, 4) & long_frame_mask(10, 4, 2)
    assert torch.equal(got, want)
    assert got[:, 10:].sum() == 0 and got[10:].sum() == 0  # text never damped
    assert want[0, 3] and want[9, 6] and not want[0, 2] and want[6, 0]  # clamped ends, a far anchor
    assert plan.details["damped_block_pairs"] == int(want.sum()) and plan.details["damping_factor"] == 0.9
    # a video with no far pair in the pattern: no flags, and the plan is the plain one
    short = _plan(TokenLayout(3, 1, 2), 3, 1, 4, 0.9)
    assert "damp" not in short.tables and short.covers_all


@pytest.mark.parametrize("backend", ["torch", "reference", "flex", "triton"])
def test_random_lut_with_flags_matches_the_reference_on_every_backend(backend, monkeypatch):
    prepare_backend(backend, monkeypatch)
    gen = torch.Generator().manual_seed(1)
    n, blk = 72, 16  # a partial last block
    mb = math.ceil(n / blk)
    mask = (torch.rand(mb, mb, generator=gen) < 0.6) | torch.eye(mb, dtype=torch.bool)
    lut = BlockLUT.from_block_mask(mask, blk, blk)
    damp = torch.rand(lut.indices.shape, generator=gen) < 0.5
    q, k, v = (torch.randn(2, 2, n, 16, generator=gen) * 2 for _ in range(3))
    keep = torch.ones(2, n, dtype=torch.bool)
    keep[1, -5:] = False
    ref = block_sparse_attention(q, k, v, lut, kv_keep=keep, backend="reference", damp=damp, damp_factor=0.5)
    out = block_sparse_attention(q, k, v, lut, kv_keep=keep, backend=backend, damp=damp, damp_factor=0.5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    if backend in ("torch", "triton", "reference"):  # threshold skipping sees the damped scores
        r2, s2 = block_sparse_attention(q, k, v, lut, backend="reference", threshold=2.0, return_stats=True,
                                        damp=damp, damp_factor=0.5)
        o2, st = block_sparse_attention(q, k, v, lut, backend=backend, threshold=2.0, return_stats=True, damp=damp,
                                        damp_factor=0.5)
        torch.testing.assert_close(o2, r2, atol=1e-5, rtol=1e-5)
        assert int(st["skipped_blocks"]) == int(s2["skipped_blocks"])


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_no_flag_set_is_the_undamped_call_bit_for_bit(backend):
    if backend == "triton":
        require_triton()
    gen = torch.Generator().manual_seed(2)
    mask = torch.rand(5, 5, generator=gen) < 0.7
    lut = BlockLUT.from_block_mask(mask | torch.eye(5, dtype=torch.bool), 16, 16)
    q, k, v = (torch.randn(1, 2, 80, 16, generator=gen) for _ in range(3))
    plain = block_sparse_attention(q, k, v, lut, backend=backend)
    none = block_sparse_attention(q, k, v, lut, backend=backend, damp=torch.zeros_like(lut.indices, dtype=torch.bool),
                                  damp_factor=0.5)
    ones = block_sparse_attention(q, k, v, lut, backend=backend, damp=torch.ones_like(lut.indices, dtype=torch.bool),
                                  damp_factor=1.0)
    assert torch.equal(none, plain)
    torch.testing.assert_close(ones, plain, atol=1e-6, rtol=1e-6)


def test_damp_arguments_are_checked():
    q = torch.randn(1, 1, 32, 16)
    lut = BlockLUT.full(32, 32, 16, 16)
    flags = torch.zeros_like(lut.indices, dtype=torch.bool)
    with pytest.raises(ValueError, match="give the lut"):
        block_sparse_attention(q, q, q, None, damp=flags)
    with pytest.raises(ValueError, match="shape"):
        block_sparse_attention(q, q, q, lut, damp=flags[..., :1])
    with pytest.raises(ValueError, match="bool tensor"):
        block_sparse_attention(q, q, q, lut, damp=flags.int())
    with pytest.raises(ValueError, match="damp_factor"):
        block_sparse_attention(q, q, q, lut, damp=flags, damp_factor=0.0)
    with pytest.raises(ValueError, match="pattern='long'"):
        DampedLongMethod(SparseVideoConfig(pattern="tiles"), window=4)
    with pytest.raises(ValueError, match=r"factor=1.5"):
        DampedLongMethod(SparseVideoConfig(pattern="long"), window=4, factor=1.5)


@pytest.mark.parametrize("backend", ["triton", "flex"])
def test_damped_long_method_on_the_gpu_backends_pads_frames_and_matches(backend, monkeypatch):
    """Through the method: frames padded to 16 slots (the device kernels' blocks), text first, key padding."""
    prepare_backend(backend, monkeypatch)
    layout = TokenLayout(7, 3, 5, text_tokens=4, text_first=True)
    cfg = SparseVideoConfig(pattern="long", window_frames=3, anchor_frames=2, backend=backend)
    method = DampedLongMethod(cfg, window=3, factor=0.6)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, layout.num_tokens, 16, generator=gen) * 1.5 for _ in range(3))
    keep = torch.ones(2, layout.num_tokens, dtype=torch.bool)
    keep[1, :2] = False
    with torch.no_grad():
        out = method(q, k, v, layout, keep[:, None, None, :])
    plan = method._plan(layout, "cpu")
    assert plan.block == 16 and plan.details["padded_positions"] == 7 and "damp" in plan.tables
    ref = _reference64(q, k, v, layout, 3, 2, 3, 0.6, 16 ** -0.5, keep)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=0)


SCRIPT = """
import json
from attnplug.kernels.block_sparse.compile_check import compile_config, damped_variants
for variant in damped_variants():
    print(json.dumps(compile_config(variant)), flush=True)
"""


def test_the_damped_triton_kernel_compiles_for_sm80_and_sm90_without_spills():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {r["arch"] for r in rows} == {80, 90} and all(r["has_damp"] for r in rows)
    for r in rows:
        assert r["error"] is None, r
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0 and r["smem"] <= r["smem_limit"], r
        assert r["registers"] <= 255, r
