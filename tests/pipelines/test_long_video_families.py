"""RIFLEx on HunyuanVideo 1.5 and LTX-2 (tiny random-weight denoisers of the real classes): no published k, so the
rule picks the component; the hook changes only that component's columns of the rotary output, and taking it off
gives the stock output back bit for bit; the long-video plan at 4x the training length (121 frames) plans RIFLEx."""

import math

import diffusers
import pytest
import torch

from attnplug.pipelines import LongVideoConfig
from attnplug.pipelines._long_video.api import resolve_config
from attnplug.pipelines._long_video.config import default_position_scale
from attnplug.pipelines._long_video.riflex import PUBLISHED_K, nearest_period_above
from attnplug.pipelines._long_video.rope import apply_riflex, remove_riflex, riflex_plan, supported_families
from attnplug.testing_families import tiny, tiny_denoiser


def _hunyuan15(**overrides):
    return tiny_denoiser("HunyuanVideo15Transformer3DModel", batch=1)[0] if not overrides else tiny(
        diffusers.HunyuanVideo15Transformer3DModel, in_channels=9, out_channels=4, text_embed_dim=16,
        text_embed_2_dim=8, image_embed_dim=8, task_type="t2v", **overrides).eval()


def _ltx2(rope_type: str = "interleaved"):
    if rope_type == "interleaved":
        return tiny_denoiser("LTX2VideoTransformer3DModel", batch=1)[0]
    return tiny(diffusers.LTX2VideoTransformer3DModel, in_channels=8, out_channels=8, num_attention_heads=2,
                attention_head_dim=8, cross_attention_dim=16, caption_channels=16, audio_in_channels=4,
                audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=8,
                audio_cross_attention_dim=16, rope_type=rope_type).eval()


def _changed(out, stock) -> set[tuple[int, ...]]:
    """The (head, column) / (column,) slots of a rotary output that differ from stock anywhere over the tokens."""
    cos, ref = out[0], stock[0]
    if cos.ndim == 4:  # (B, heads, N, cols)
        diff = (cos != ref).any(dim=2).any(dim=0)
        return {tuple(i) for i in diff.nonzero().tolist()}
    diff = (cos != ref).reshape(-1, cos.shape[-1]).any(dim=0)
    return {(i,) for i in diff.nonzero().flatten().tolist()}


def test_both_families_are_supported():
    assert {"hunyuanvideo15", "ltx2"} <= set(supported_families())


def test_hunyuanvideo15_lowers_the_rules_component_and_removes_exactly():
    model = _hunyuan15()  # temporal RoPE dim 4, theta 256: periods 6.3 and 100.5 latent frames
    x = torch.randn(1, 9, 104, 4, 4)
    stock = model.rope(x)
    plan = apply_riflex(model, 31, 104)
    assert plan.family == "hunyuanvideo15" and plan.index == 1 and plan.source.startswith("rule:")
    assert plan.lowered and plan.new_omega == pytest.approx(0.9 * 2 * math.pi / 104)
    out = model.rope(x)
    assert _changed(out, stock) == {(2,), (3,)}  # component 1 of the temporal block: columns 2, 3
    p = torch.arange(104, dtype=torch.float64).repeat_interleave(4)  # 2 x 2 tokens per latent frame
    for got, fn in zip(out, (torch.cos, torch.sin)):
        torch.testing.assert_close(got[:, 2].double(), fn(plan.new_omega * p), atol=1e-6, rtol=0)
        torch.testing.assert_close(got[:, 3], got[:, 2], atol=0, rtol=0)
    remove_riflex(model)
    assert all(torch.equal(a, b) for a, b in zip(model.rope(x), stock))


def test_hunyuanvideo15_uses_the_rule_not_hunyuanvideos_published_k():
    """HunyuanVideo 1.5's temporal RoPE as released (rope_axes_dim (16, 56, 56), theta 256) is the one HunyuanVideo's
    k=4 was published for; the k is HunyuanVideo's, so 1.5 takes the rule (which gives the same component, 3)."""
    model = _hunyuan15(num_attention_heads=1, attention_head_dim=128, rope_axes_dim=(16, 56, 56))
    plan = riflex_plan(model, 31, 124)
    assert plan.omegas == pytest.approx(PUBLISHED_K["hunyuanvideo"].frequencies())
    assert plan.index == 3 and plan.source.startswith("rule:") and "no published k" in plan.source
    assert plan.period == pytest.approx(50.27, abs=0.01) and plan.lowered


@pytest.mark.parametrize("rope_type", ["interleaved", "split"])
def test_ltx2_lowers_the_rules_component_and_removes_exactly(rope_type):
    model = _ltx2(rope_type)  # dim 16: 2 temporal components, periods 120 and 0.012 latent frames at 24 fps
    coords = model.rope.prepare_video_coords(1, 130, 2, 2, torch.device("cpu"), fps=24.0)
    stock = model.rope(coords)
    plan = apply_riflex(model, 16, 130)
    assert plan.family == "ltx2" and plan.index == 0 and plan.source.startswith("rule:")
    assert plan.period == pytest.approx(120.0) and plan.lowered
    out = model.rope(coords)
    # component 0: columns 4, 5 after 4 padding columns (interleaved); flat index 2 = head 0, column 2 (split)
    assert _changed(out, stock) == ({(4,), (5,)} if rope_type == "interleaved" else {(0, 2)})
    c = coords.double().mean(dim=-1)[0, 0] / model.rope.base_num_frames  # the temporal midpoints / base
    a = 8 / (24.0 * model.rope.base_num_frames)  # per latent frame
    want = torch.cos(plan.new_omega / (2 * a) * (2 * c - 1))
    got = out[0][0, :, 4] if rope_type == "interleaved" else out[0][0, 0, :, 2]
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    remove_riflex(model)
    assert all(torch.equal(a, b) for a, b in zip(model.rope(coords), stock))


def test_ltx2_reads_each_calls_frame_rate_from_the_coordinates():
    """At 12 fps a latent frame advances the temporal coordinate twice as far: component 0's period is 60 latent
    frames, so 130 frames lower it to 0.9 x 2 pi / 130 per latent frame of that call."""
    model = _ltx2()
    apply_riflex(model, 16, 130)
    coords = model.rope.prepare_video_coords(1, 130, 2, 2, torch.device("cpu"), fps=12.0)
    c = coords.double().mean(dim=-1)[0, 0] / model.rope.base_num_frames
    a = 8 / (12.0 * model.rope.base_num_frames)
    want = torch.cos(0.9 * 2 * math.pi / 130 / (2 * a) * (2 * c - 1))
    torch.testing.assert_close(model.rope(coords)[0][0, :, 4].double(), want, atol=1e-5, rtol=0)
    remove_riflex(model)


def test_ltx2_rule_on_the_released_rotary_config():
    """LTX-2 as released: video dim 4096 (682 temporal components), theta 10000, base 20, 8x temporal compression;
    at 24 fps the rule picks the shortest period of at least the 16 training latent frames."""
    from diffusers.models.transformers.transformer_ltx2 import LTX2AudioVideoRotaryPosEmbed

    from attnplug.pipelines._long_video.riflex import plan_for_frequencies
    from attnplug.pipelines._long_video.rope_adapters2 import LTX2Adapter

    rope = LTX2AudioVideoRotaryPosEmbed(dim=4096, base_num_frames=20, scale_factors=(8, 32, 32), theta=10000.0)
    omegas = LTX2Adapter().components(None, rope)
    a = 8 / (24 * 20)
    periods = [2 / (a * 10000 ** (j / 681)) for j in range(682)]  # 2 pi / (2 a theta^(j / 681) pi / 2)
    assert [2 * math.pi / w for w in omegas] == pytest.approx(periods)
    plan = plan_for_frequencies("ltx2", omegas, 16, 64, position_scale=1)
    assert plan.index == nearest_period_above(periods, 16) == 148
    assert 16 <= plan.period < periods[147] and plan.lowered
    # the default at 4x (positions divided by 4) spans the 16 training latent frames, within that period: kept; a
    # divisor of 3 spans 21.3, beyond it: lowered
    assert not plan_for_frequencies("ltx2", omegas, 16, 64, position_scale=default_position_scale(4)).lowered
    assert plan_for_frequencies("ltx2", omegas, 16, 64, position_scale=3).lowered


class _Pipe:
    """A stand-in video pipeline around one denoiser: what ``resolve_config`` reads; it never generates."""

    def __init__(self, transformer, compression: int):
        self.transformer = transformer
        self.vae_scale_factor_temporal = compression

    def __call__(self, prompt=None, num_frames: int = 121, **kwargs):
        raise AssertionError("resolve_config does not call the pipeline")


# family -> (tiny builder, VAE temporal compression, training latent frames, the rule's component, its period)
FAMILIES = {"hunyuanvideo15": (_hunyuan15, 4, 31, 1, 100.53), "ltx2": (_ltx2, 8, 16, 0, 120.0)}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_plan_at_4x_plans_riflex_on_the_rules_component(family):
    build, r, train, index, period = FAMILIES[family]
    pipe = _Pipe(build(), r)
    frames = r * (4 * train - 1) + 1  # 4x the training length (121 frames) in latent frames
    plan = resolve_config(pipe, frames)
    assert plan.family == family and plan.train_latent == train and plan.latent_frames == 4 * train
    assert default_position_scale(4) == 4
    assert plan.rope == "riflex" and plan.position_scale == pytest.approx(default_position_scale(4))
    assert plan.riflex_component == index and plan.riflex_source.startswith("rule:")
    assert plan.riflex_period == pytest.approx(period, abs=0.01)
    # the long sparse pattern by default on HunyuanVideo 1.5; LTX-2 keeps RoPE rescaling alone (the plan says so)
    assert plan.long_sparse is (family == "hunyuanvideo15") and not plan.temporal_windows
    assert family == "hunyuanvideo15" or "ltx2 keeps its default" in plan.sparse_note
    alone = resolve_config(pipe, frames, LongVideoConfig(rope="riflex", position_scale=1))
    lowered = 4 * train > period  # RIFLEx alone lowers the component only beyond its period
    # LTX-2, like LTX, plans per call (each call's frame rate): its hook is installed even when the reference plan
    # changes nothing; the other families keep RoPE stock then
    per_call = family == "ltx2"
    assert alone.riflex_lowered is lowered and alone.rope == ("riflex" if lowered or per_call else "none")
