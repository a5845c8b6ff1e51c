"""``LongVideoConfig(damping=True, sparse=SparseVideoConfig(pattern="long"))``: UltraViCo's damping composed with the
long-video sparse pattern. It is planned (not refused; by default, like the pattern alone, in the last quarter of the
steps), with ``global_steps=0`` runs the pattern on every self-attention call with the kept far frame pairs damped
(equal to ``damped_attention`` under the pattern's token mask on the captured q/k/v), reports the damping, makes no
host sync per call, leaves the pipeline stock, and damping with the temporal windows or another pattern stays
refused."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

import attnplug
from attnplug.layout import TokenLayout
from attnplug.methods.patterns import long_frame_mask
from attnplug.pipelines import LongVideoConfig, long_video
from attnplug.pipelines._long_video.api import resolve_config
from attnplug.pipelines._long_video.config import LONG_GLOBAL_STEPS
from attnplug.pipelines._long_video.damping import DampedLongMethod, damped_attention, far_pairs
from attnplug.testing import tiny_model

LONG = attnplug.SparseVideoConfig(pattern="long", anchor_frames=2, backend="torch")
# 45 video frames = 12 latent frames, 4x the 9-frame (3 latent frames) training length given below
ARGS = dict(num_frames=45, height=16, width=16, num_inference_steps=2, output_type="pt")
CONFIG = LongVideoConfig(train_frames=9, sparse=LONG, damping=True, damping_factor=0.6, rope="none",
                         noise_rescheduling=False)
EVERY_STEP = CONFIG.replace(global_steps=0)  # the damped pattern from the first step


def _frames(out):
    return out.frames if hasattr(out, "frames") else out[0]


def _pattern_mask(layout: TokenLayout, window: int, anchors: int) -> torch.Tensor:
    hw = layout.height * layout.width
    frame = torch.full((layout.num_tokens,), -1)
    start = layout.text_tokens if layout.text_first else 0
    frame[start: start + layout.image_tokens] = torch.arange(layout.image_tokens) // hw
    img, f = frame >= 0, frame.clamp(min=0)
    return ~img[:, None] | ~img[None, :] | long_frame_mask(layout.frames, window, anchors)[f][:, f]


def test_damping_with_the_long_pattern_is_planned(wan):
    plan = resolve_config(wan, 45, CONFIG)
    assert plan.damping and plan.long_sparse and plan.damping_factor == 0.6
    assert not plan.temporal_windows and plan.global_steps == LONG_GLOBAL_STEPS and plan.train_latent == 3
    assert plan.extension == 4
    first = resolve_config(wan, 45, EVERY_STEP)
    assert first.damping and first.long_sparse and first.global_steps == 0


def test_damping_with_windows_or_another_pattern_stays_refused(wan):
    with pytest.raises(ValueError, match=r"damping runs dense attention.*temporal_windows=True.*pattern='long'"):
        resolve_config(wan, 45, LongVideoConfig(train_frames=9, damping=True, temporal_windows=True))
    with pytest.raises(ValueError, match=r"damping.*pattern='long'"):
        resolve_config(wan, 45, LongVideoConfig(train_frames=9, damping=True, sparse=LONG, temporal_windows=True))
    tiles = attnplug.SparseVideoConfig(pattern="tiles")
    with pytest.raises(ValueError, match=r"damping.*sparse=SparseVideoConfig\(pattern='long'\)"):
        resolve_config(wan, 45, LongVideoConfig(train_frames=9, damping=True, sparse=tiles))


def test_long_video_runs_the_damped_pattern_on_every_call_and_equals_the_reference(wan, monkeypatch):
    stock = _frames(wan("red circle", generator=torch.Generator().manual_seed(0), **ARGS))
    captured, reports = [], []
    original = DampedLongMethod.__call__

    def spy(self, q, k, v, layout=None, mask=None, info=None):
        out = original(self, q, k, v, layout, mask, info)
        if len(captured) < 3:
            captured.append((q.clone(), k.clone(), v.clone(), layout, mask, info.scale if info else None, out))
        return out

    monkeypatch.setattr(DampedLongMethod, "__call__", spy)

    def on_step(p, i, t, kw):
        reports.append((attnplug.stats(p.transformer), type(attnplug.method_of(p.transformer)).__name__))
        return kw

    out = _frames(long_video(wan, "red circle", config=EVERY_STEP, generator=torch.Generator().manual_seed(0),
                             callback_on_step_end=on_step, **ARGS))
    assert len(reports) == ARGS["num_inference_steps"] and all(name == "DampedLongMethod" for _, name in reports)
    assert reports[0][0]["method_report"]["sparse_calls"] > 0  # from the first step
    st, _ = reports[-1]
    report = st["method_report"]
    assert st["self"]["calls"] > 0 and st["self"]["stock"] == 0 and st["self"]["method"] == st["self"]["calls"]
    assert report["pattern"] == "long" and report["sparse_calls"] == st["self"]["calls"]
    assert not report.get("handed_back")
    assert report["damping: factor"] == 0.6 and report["damping: window"] == 3
    assert report["damping: calls"] == report["sparse_calls"]
    (details,) = report["plans"].values()
    assert details["window_frames"] == 3 and details["damping_factor"] == 0.6 and details["damped_block_pairs"] > 0

    assert captured
    for q, k, v, layout, mask, scale, got in captured:
        assert layout.frames == 12 and mask is None
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        ref = damped_attention(q.double(), k.double(), v.double(), far_pairs(layout, 3), 0.6, scale,
                               _pattern_mask(layout, 3, 2))
        torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)

    # the pipeline is stock again: bit-identical to the stock call before
    assert attnplug.method_of(wan.transformer) is None
    again = _frames(wan("red circle", generator=torch.Generator().manual_seed(0), **ARGS))
    assert torch.equal(again, stock)
    assert (out - stock).abs().max() > 1e-5


def test_damping_changes_the_long_pattern_and_remove_restores_stock():
    model, inputs = tiny_model("wan", frames=12)
    with torch.no_grad():
        stock = model(**inputs, return_dict=False)[0]
    cfg = attnplug.SparseVideoConfig(pattern="long", train_latent_frames=3, anchor_frames=2, backend="torch")
    attnplug.apply(model, cfg, schedule=attnplug.Schedule())
    with torch.no_grad():
        plain = model(**inputs, return_dict=False)[0]
    attnplug.apply(model, DampedLongMethod(cfg, window=3, factor=0.5), schedule=attnplug.Schedule())
    with torch.no_grad():
        damped = model(**inputs, return_dict=False)[0]
    assert attnplug.stats(model)["method_report"]["sparse_calls"] > 0
    assert not torch.allclose(damped, plain, atol=1e-5)
    attnplug.remove(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs, return_dict=False)[0], stock)


def test_no_host_sync_per_call_after_the_first(monkeypatch):
    """The damped pattern on the GPU path (the Triton op, its kernel replaced by zeros): no would-sync operation per
    attention call once the plan is built."""
    pytest.importorskip("triton")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "processors"))
    from sync_counter import SyncCounter, use_fake_block_sparse_kernel

    use_fake_block_sparse_kernel(monkeypatch)
    model, inputs = tiny_model("wan", frames=8, batch=2)
    cfg = attnplug.SparseVideoConfig(pattern="long", anchor_frames=2, backend="triton")
    attnplug.apply(model, DampedLongMethod(cfg, window=2, factor=0.9), schedule=attnplug.Schedule())
    calls = 4
    with SyncCounter() as sync:
        sync.watch(model)
        for i, t in enumerate(torch.linspace(999, 100, calls)):
            timestep = t.to(inputs["timestep"].dtype).expand(inputs["timestep"].shape)
            with model.cache_context("cond", step_index=i, num_inference_steps=calls), torch.no_grad():
                model(**{**inputs, "timestep": timestep}, return_dict=False)
            if i == 0:
                sync.clear()
    assert sync.calls["self-attention"] > 0
    for scope in ("self-attention", "cross-attention"):
        assert sync.total(scope) == 0, sync.report(scope)
    report = attnplug.stats(model)["method_report"]
    assert report["sparse_calls"] > 0
    (details,) = report["plans"].values()
    assert details["damped_block_pairs"] > 0 and math.isclose(details["damping_factor"], 0.9)
    attnplug.remove(model)
