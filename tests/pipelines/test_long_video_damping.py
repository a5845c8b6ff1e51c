"""Long video: UltraViCo attention damping equals a masked-and-biased dense reference, is undone exactly, and is
planned (off by default, replacing the windows when on)."""

import pytest
import torch

import attnplug
from attnplug.layout import TokenLayout
from attnplug.pipelines import LongVideoConfig, long_video
from attnplug.pipelines._long_video import damping
from attnplug.pipelines._long_video.api import resolve_config
from attnplug.pipelines._long_video.damping import FrameDampingMethod, damped_attention, far_pairs
from attnplug.testing import forward, tiny_model


def _reference(q, k, v, layout, window, factor, scale):
    """Dense attention with an explicit mask of far image pairs and the bias ``(factor - 1) * s`` on their positive
    scores (``s + (factor - 1) s = factor s``), in float64."""
    q, k, v = q.double(), k.double(), v.double()
    hw, n_img = layout.height * layout.width, layout.frames * layout.height * layout.width
    start = layout.text_tokens if layout.text_first else 0
    n = layout.num_tokens
    frame = torch.full((n,), -1.0, dtype=torch.float64)
    for t in range(n_img):
        frame[start + t] = t // hw
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            if frame[i] >= 0 and frame[j] >= 0 and abs(frame[i] - frame[j]) > window / 2:
                mask[i, j] = True
    s = q @ k.transpose(-1, -2) * scale
    bias = torch.where(mask & (s > 0), (factor - 1) * s, torch.zeros_like(s))
    return torch.softmax(s + bias, dim=-1) @ v


@pytest.mark.parametrize("frames,text,text_first,window,factor", [
    (9, 0, False, 4, 0.9), (7, 3, False, 3, 0.5), (6, 2, True, 2, 0.7), (5, 0, False, 8, 0.9),
])
def test_damping_equals_masked_and_biased_dense_reference(frames, text, text_first, window, factor, monkeypatch):
    torch.manual_seed(0)
    layout = TokenLayout(frames, 2, 3, text_tokens=text, text_first=text_first)
    n, d = layout.num_tokens, 40
    q, k, v = (torch.randn(2, 3, n, d) for _ in range(3))
    scale = d ** -0.5
    ref = _reference(q, k, v, layout, window, factor, scale).float()
    out = damped_attention(q, k, v, far_pairs(layout, window), factor, scale)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(damping, "_CHUNK_ELEMENTS", 2 * 3 * n * 5)  # query chunks of 5 rows: same result
    torch.testing.assert_close(damped_attention(q, k, v, far_pairs(layout, window), factor, scale), out,
                               atol=1e-6, rtol=1e-6)
    if window >= 2 * (frames - 1):  # no pair beyond the window: plain attention
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        torch.testing.assert_close(out, sdpa, atol=1e-5, rtol=1e-5)
    else:
        assert not torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-4)


def test_damping_lowers_far_weights_only():
    layout = TokenLayout(6, 1, 1)
    q = torch.ones(1, 1, 6, 4)
    k = torch.ones(1, 1, 6, 4)  # equal positive scores: stock attention is uniform
    v = torch.eye(6).view(1, 1, 6, 6)
    out = damped_attention(q, k, v, far_pairs(layout, 2), 0.5, scale=1.0)[0, 0]
    # query 0: frames 0, 1 in the window (distance <= 1), 2..5 damped from score 4 to 2
    near, far = torch.exp(torch.tensor(4.0)), torch.exp(torch.tensor(2.0))
    torch.testing.assert_close(out[0], torch.stack([near, near, far, far, far, far]) / (2 * near + 4 * far))


def test_method_hands_back_short_videos_and_checks_its_arguments():
    method = FrameDampingMethod(window=8, factor=0.9)
    q = torch.randn(1, 2, 5 * 4, 8)
    assert method(q, q, q, TokenLayout(5, 2, 2)) is None
    assert method.last_reason() == "video-within-window"
    k = torch.randn(1, 2, 7, 8)
    assert method(q, k, k, TokenLayout(5, 2, 2)) is None
    assert method.last_reason() == "keys-differ-from-queries"
    with pytest.raises(ValueError, match=r"factor=1.5 must be a number in \(0, 1\]"):
        FrameDampingMethod(window=8, factor=1.5)
    with pytest.raises(ValueError, match="window=0 must be a positive int"):
        FrameDampingMethod(window=0)


def test_apply_and_remove_undo_exactly():
    model, inputs = tiny_model("wan", frames=9)
    stock = forward(model, inputs)
    method = FrameDampingMethod(window=2, factor=0.5)
    attnplug.apply(model, method)
    damped = forward(model, inputs)
    assert method.calls > 0 and not torch.allclose(damped, stock, atol=1e-5)
    attnplug.remove(model)
    assert attnplug.method_of(model) is None
    assert torch.equal(forward(model, inputs), stock)


def test_config_defaults_off_and_refuses_windows():
    from attnplug.models import load_pipeline

    pipe = load_pipeline("shapes-video")
    plan = resolve_config(pipe, 32)
    assert not plan.damping and plan.long_sparse and not plan.temporal_windows
    assert resolve_config(pipe, 32, LongVideoConfig(sparse=None)).temporal_windows  # without the default pattern
    on = resolve_config(pipe, 32, LongVideoConfig(damping=True, damping_factor=0.8))
    assert on.damping and on.damping_factor == 0.8 and on.long_sparse  # composed with the default pattern
    dense = resolve_config(pipe, 32, LongVideoConfig(damping=True, damping_factor=0.8, sparse=None))
    assert dense.damping and not dense.long_sparse and not dense.temporal_windows  # damping replaces the windows
    with pytest.raises(ValueError, match="damping runs dense attention.*temporal_windows=True"):
        resolve_config(pipe, 32, LongVideoConfig(damping=True, temporal_windows=True))
    with pytest.raises(ValueError, match="damping_factor"):
        LongVideoConfig(damping_factor=0)
    gen = torch.Generator().manual_seed(0)
    out = long_video(pipe, "red circle moving right", num_frames=16, num_inference_steps=2, generator=gen,
                     output_type="pt", config=LongVideoConfig(damping=True, damping_factor=0.5, sparse=None))
    plain = long_video(pipe, "red circle moving right", num_frames=16, num_inference_steps=2, output_type="pt",
                       generator=torch.Generator().manual_seed(0), config=LongVideoConfig(sparse=None))
    assert out.frames.shape == plain.frames.shape and not torch.equal(out.frames, plain.frames)
    assert attnplug.method_of(pipe) is None
