"""Long video's temporal windows: a sparse pattern inside them runs on joint-attention models (CogVideoX: text keys in
self-attention) with every window counted in ``stats()``; a run whose dense first steps cover every step warns once
with the numbers; the window and stride fields are named by unit (``window_frames``, ``stride_frames``)."""

import logging

import pytest
import torch
import torch.nn.functional as F

import attnplug
from attnplug.methods import AttentionMethod
from attnplug.pipelines import LongVideoConfig, long_video, long_video_plan
from attnplug.pipelines._long_video.attention import TemporalWindowMethod
from attnplug.testing import forward, tiny_model

TEXT = 5


class _DenseInner(AttentionMethod):
    """SDPA on whatever the window gives it; records each window's layout and query count."""

    def __init__(self):
        self.seen = []

    def __call__(self, q, k, v, layout, mask=None, info=None):
        self.seen.append((layout, q.shape[-2], k.shape[-2]))
        return F.scaled_dot_product_attention(q, k, v, scale=info.scale if info else None)


def _cogvideox():
    """Joint attention: 5 text tokens first, then the (4, 8, 8) token grid."""
    return tiny_model("cogvideox", frames=4, text=TEXT, batch=1)


def test_the_inner_method_gets_the_windows_text_tokens_on_joint_attention():
    model, inputs = _cogvideox()
    inner = _DenseInner()
    with attnplug.applied(model, TemporalWindowMethod(window=2, stride=1, inner=inner), schedule=attnplug.Schedule()):
        out = forward(model, inputs)
        stats = attnplug.stats(model)
    with attnplug.applied(model, TemporalWindowMethod(window=2, stride=1), schedule=attnplug.Schedule()):
        plain = forward(model, inputs)  # SDPA in every window
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)  # the inner computes exactly the window's attention
    windows = len(inner.seen)
    assert windows == 3  # windows [0, 2), [1, 3), [2, 4) of the one layer's one call
    for layout, n_q, n_k in inner.seen:  # queries = keys = one window's image tokens, then every text token
        assert (layout.frames, layout.height, layout.width, layout.text_tokens) == (2, 8, 8, TEXT)
        assert not layout.text_first and n_q == n_k == 2 * 64 + TEXT
    report = stats["method_report"]
    assert report["windows: window"] == 1 and report["windows: inner windows"] == report["windows: inner ran"] == 3
    assert not any("handed back" in key for key in report)


def test_a_sparse_pattern_runs_inside_the_windows_of_a_joint_attention_model():
    model, inputs = _cogvideox()
    sparse = attnplug.SparseVideoConfig(pattern="tiles", density=0.25, tile=(1, 4, 4))
    with attnplug.applied(model, TemporalWindowMethod(window=2, stride=1, inner=sparse.build()),
                          schedule=attnplug.Schedule()):
        out = forward(model, inputs)
        report = attnplug.stats(model)["method_report"]
    with attnplug.applied(model, TemporalWindowMethod(window=2, stride=1), schedule=attnplug.Schedule()):
        plain = forward(model, inputs)
    assert report["windows: inner windows"] == report["windows: inner ran"] == 3
    assert report["sparse_calls"] == 3 and not report.get("handed_back")
    assert not torch.equal(out, plain)  # the pattern changed the windows' attention


def test_inner_hand_backs_in_windows_are_counted_by_reason():
    class _Refuses(AttentionMethod):
        def __call__(self, q, k, v, layout, mask=None, info=None):
            return self.hand_back("window-covers-grid")

    model, inputs = _cogvideox()
    with attnplug.applied(model, TemporalWindowMethod(window=2, stride=1, inner=_Refuses()),
                          schedule=attnplug.Schedule()):
        forward(model, inputs)
        report = attnplug.stats(model)["method_report"]
    assert report["windows: inner windows"] == 3 and report["windows: inner ran"] == 0
    assert report["windows: inner handed back (window-covers-grid)"] == 3


def test_windows_honour_a_key_padding_mask_against_a_masked_dense_reference():
    from attnplug.layout import TokenLayout
    from attnplug.pipelines._long_video.attention import frame_weights, temporal_window_attention, window_starts

    torch.manual_seed(0)
    frames, hw, text = 5, 4, 3
    layout = TokenLayout(frames, 2, 2, text_tokens=text)  # text last
    n = layout.num_tokens
    q, k, v = (torch.randn(2, 2, n, 8) for _ in range(3))
    keep = torch.ones(2, n, dtype=torch.bool)
    keep[0, -2:] = False  # the first prompt has 2 padded text tokens
    out = temporal_window_attention(q, k, v, layout, window=2, stride=1, keep=keep)
    acc, total, w = torch.zeros(2, 2, frames * hw, 8), torch.zeros(frames * hw, 1), frame_weights(2, "pyramid")
    for s in window_starts(frames, 2, 1):
        visible = torch.zeros(n, dtype=torch.bool)
        visible[s * hw:(s + 2) * hw] = True
        visible[frames * hw:] = True
        mask = (visible[None, :] & keep)[:, None, None, :]  # window keys and text keys, less the padding
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)[:, :, :frames * hw]
        wt = torch.zeros(frames * hw, 1)
        wt[s * hw:(s + 2) * hw, 0] = w.repeat_interleave(hw)
        acc, total = acc + wt * ref, total + wt
    torch.testing.assert_close(out[:, :, :frames * hw], acc / total, atol=2e-6, rtol=1e-5)
    text_ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])[:, :, frames * hw:]
    torch.testing.assert_close(out[:, :, frames * hw:], text_ref)
    unmasked = temporal_window_attention(q, k, v, layout, window=2, stride=1)
    assert not torch.allclose(out[0], unmasked[0]) and torch.allclose(out[1], unmasked[1])


def test_windows_and_a_sparse_pattern_run_on_hunyuanvideo_whose_calls_carry_a_mask():
    model, inputs = tiny_model("hunyuanvideo", frames=4, batch=1)  # padded prompt: a key-padding mask on every call
    sparse = attnplug.SparseVideoConfig(pattern="tiles", density=0.25, tile=(1, 4, 4))
    with attnplug.applied(model, TemporalWindowMethod(window=2, stride=1, inner=sparse.build()),
                          schedule=attnplug.Schedule()):
        out = forward(model, inputs)
        stats = attnplug.stats(model)
    assert stats["self"]["method"] == stats["self"]["calls"] > 0 and not stats["self"]["reasons"]
    report = stats["method_report"]
    assert report["windows: inner ran"] == report["windows: inner windows"] == 3 * stats["self"]["method"]
    assert torch.isfinite(out).all()


@pytest.fixture(scope="module")
def shapes():
    from attnplug.models import load_pipeline

    pipe = load_pipeline("shapes-video")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_a_run_with_no_windowed_step_warns_once_with_the_numbers(shapes, caplog):
    config = LongVideoConfig(rope="none", sparse=None)  # 4x: windows in the last quarter (global_steps=0.75)
    with caplog.at_level(logging.WARNING, logger="attnplug"):
        long_video(shapes, "red circle", num_frames=32, num_inference_steps=2, config=config, output_type="pt")
    warnings = [r.getMessage() for r in caplog.records if "never run" in r.getMessage()]
    assert warnings == ["long_video: global_steps=0.75 keeps 2 of the 2 denoising steps dense (round(0.75 x 2) = 2), "
                        "so the temporal windows never run; give num_inference_steps >= 3, or a smaller "
                        "LongVideoConfig.global_steps."]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="attnplug"):
        long_video(shapes, "red circle", num_frames=32, num_inference_steps=4, config=config, output_type="pt")
    assert not [r for r in caplog.records if "never run" in r.getMessage()]  # round(3) of 4: the last step windowed


def test_window_and_stride_are_named_in_frames(shapes):
    plan = long_video_plan(shapes, 32, LongVideoConfig(window_frames=6, stride_frames=2))
    assert (plan.window, plan.stride) == (6, 2)
    with pytest.raises(TypeError, match=r"LongVideoConfig\(window=6\): the field is now 'window_frames'"):
        LongVideoConfig(window=6)
    with pytest.raises(TypeError, match=r"give LongVideoConfig\(stride_frames=2\)"):
        LongVideoConfig(stride=2)
    assert LongVideoConfig(window_frames=6).replace(stride_frames=2).stride_frames == 2
    with pytest.raises(ValueError, match=r"stride_frames=8 .*window_frames=6"):
        long_video_plan(shapes, 32, LongVideoConfig(window_frames=6, stride_frames=8))
