"""RIFLEx on the published rotary configs (random weights, rotary part as published): the component it lowers is
the authors' k for HunyuanVideo, CogVideoX-5b and Wan; the rule for other models; RoPE changes only beyond that
component's period (stock otherwise, and the plan says so); every expert of a two-expert Wan 2.2 pipeline gets it."""

import math

import pytest
import torch

from attnplug.pipelines import LongVideoConfig, long_video, long_video_plan
from attnplug.pipelines._long_video import describe
from attnplug.pipelines._long_video.riflex import PUBLISHED_K, nearest_period_above, plan_for_frequencies
from attnplug.pipelines._long_video.rope import HOOK_NAME, apply_riflex, remove_riflex, riflex_plan


def _hunyuanvideo():
    """hunyuanvideo-community/HunyuanVideo's rotary part: head dim 128, rope_axes_dim (16, 56, 56), theta 256,
    patch 1 x 2 x 2 (one head, one layer)."""
    from diffusers import HunyuanVideoTransformer3DModel

    return HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=1, attention_head_dim=128, num_layers=1,
        num_single_layers=0, num_refiner_layers=1, text_embed_dim=16, pooled_projection_dim=8, patch_size=2,
        patch_size_t=1, rope_theta=256.0, rope_axes_dim=(16, 56, 56),
    ).eval()


def _cogvideox_5b(rotary: bool = True):
    """THUDM/CogVideoX-5b's rotary part: head dim 64 (temporal RoPE dim 16, theta 10000), rotary on, 49 frames at 4x
    temporal compression, patch 2 (one head, one layer). ``rotary=False``: CogVideoX-2b's (no RoPE)."""
    from diffusers import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel(
        num_attention_heads=1, attention_head_dim=64, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=1, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=4, use_rotary_positional_embeddings=rotary,
    ).eval()


def _wan():
    """Wan 2.1 / 2.2's rotary part (Wan-AI/Wan2.1-T2V-1.3B-Diffusers, Wan2.2-T2V-A14B-Diffusers): head dim 128
    (temporal RoPE dim 44, theta 10000), patch 1 x 2 x 2, rope_max_seq_len 1024 (one head, one layer)."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=1, attention_head_dim=128, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=32, num_layers=1, rope_max_seq_len=1024,
    ).eval()


class _Pipe:
    """A stand-in video pipeline around one denoiser: what ``long_video_plan`` reads (a call taking ``num_frames``,
    the VAE's temporal compression); it never generates."""

    vae_scale_factor_temporal = 4

    def __init__(self, transformer):
        self.transformer = transformer

    def __call__(self, prompt=None, num_frames: int = 49, **kwargs):
        raise AssertionError("long_video_plan does not call the pipeline")


def _riflex_hook(model):
    registry = getattr(model.rope, "_diffusers_hook", None)
    return None if registry is None else registry.get_hook(HOOK_NAME)


# family -> (builder, training length in latent frames, the published 0-based index, its period in latent frames)
PUBLISHED = {
    "hunyuanvideo": (_hunyuanvideo, 33, 3, 50.27),
    "cogvideox": (_cogvideox_5b, 13, 1, 19.87),
    "wan": (_wan, 21, 5, 50.96),
}


@pytest.mark.parametrize("family", list(PUBLISHED))
def test_riflex_lowers_the_published_component_on_the_real_rotary_configs(family):
    build, train, index, period = PUBLISHED[family]
    plan = riflex_plan(build(), train, 4 * train)
    assert PUBLISHED_K[family].index == index  # 1-based k as published -> 0-based
    assert plan.index == index and plan.source.startswith(f"published k={index + 1} ")
    assert plan.period == pytest.approx(period, abs=0.01)
    assert plan.lowered and plan.new_omega == pytest.approx(0.9 * 2 * math.pi / (4 * train))


@pytest.mark.parametrize("family", list(PUBLISHED))
def test_the_plan_reports_the_published_component(family):
    build, train, index, period = PUBLISHED[family]
    plan = long_video_plan(_Pipe(build()), 4 * (2 * train - 1) + 1, LongVideoConfig(rope="riflex"))
    assert plan.train_latent == train and plan.riflex_component == index
    assert plan.riflex_period == pytest.approx(period, abs=0.01) and plan.riflex_source.startswith("published k=")
    assert describe(plan)["riflex_component"] == index and describe(plan)["rope_note"] == plan.rope_note


def test_the_rule_nearest_period_above_the_training_length():
    """The documented rule: agrees with the published k for HunyuanVideo and CogVideoX-5b, not for Wan (whose
    published k the table supplies); a temporal RoPE unlike the published one uses the rule."""
    for family, (_, train, index, _) in PUBLISHED.items():
        periods = [2 * math.pi / w for w in PUBLISHED_K[family].frequencies()]
        assert (nearest_period_above(periods, train) == index) is (family != "wan")
    assert nearest_period_above([6.3, 62.8, 628.3], 8) == 1
    assert nearest_period_above([6.3, 62.8, 628.3], 62.8) == 1  # a period equal to the training length counts
    assert nearest_period_above([2.0, 3.0], 8) == 1  # every period shorter: the longest
    wan_like = [1.0 / 10000 ** (2 * j / 8) for j in range(4)]  # a Wan of head dim 24 (temporal dim 8)
    plan = plan_for_frequencies("wan", wan_like, 8, 80)
    assert plan.index == 1 and plan.source.startswith("rule:")
    ltx = plan_for_frequencies("ltx", [1.0, 0.1, 0.01], 8, 80)
    assert ltx.index == 1 and "no published k" in ltx.source


def test_riflex_changes_rope_only_beyond_the_components_period():
    model = _wan()  # published k=6: period 50.96 latent frames
    within = riflex_plan(model, 21, 50)
    assert not within.lowered and not within.changes_rope and "RoPE stays stock" in within.describe()
    apply_riflex(model, 21, 50)
    assert _riflex_hook(model) is None  # nothing installed
    x = torch.randn(1, 4, 53, 2, 2)
    stock = model.rope(x)
    beyond = apply_riflex(model, 21, 53)
    assert beyond.lowered and beyond.new_omega == pytest.approx(0.9 * 2 * math.pi / 53)
    cos, sin = model.rope(x)
    p = torch.arange(53, dtype=torch.float64)
    col = 2 * beyond.index  # columns 10, 11: component 5 of the temporal block
    torch.testing.assert_close(cos[0, :, 0, col].double(), torch.cos(beyond.new_omega * p), atol=1e-6, rtol=0)
    others = [c for c in range(cos.shape[-1]) if c // 2 != beyond.index]
    assert torch.equal(cos[..., others], stock[0][..., others])
    assert torch.equal(sin[..., others], stock[1][..., others])
    remove_riflex(model)
    assert all(torch.equal(a, b) for a, b in zip(model.rope(x), stock))


def test_a_video_within_the_period_keeps_rope_stock_and_the_plan_says_so():
    pipe = _Pipe(_wan())  # 81 frames = 21 latent; component 5's period: 50.96 latent frames
    within = long_video_plan(pipe, 4 * 48 + 1, LongVideoConfig(rope="riflex", position_scale=1))  # 49 latent
    assert within.rope == "none" and within.riflex_component == 5 and not within.riflex_lowered
    assert within.rope_note.startswith("RoPE stays stock") and "49.0" in within.rope_note
    beyond = long_video_plan(pipe, 4 * 52 + 1, LongVideoConfig(rope="riflex", position_scale=1))  # 53 latent
    assert beyond.rope == "riflex" and beyond.riflex_lowered and "lowers component 5" in beyond.rope_note
    # with the default interpolation (positions divided by the extension) the video spans the training length (21
    # latent frames) in RoPE phase, within component 5's period (51.0): positions are interpolated and RIFLEx keeps
    # the component
    default = long_video_plan(pipe, 4 * 84 + 1)
    assert default.rope == "riflex" and not default.riflex_lowered and "keeps component 5" in default.rope_note


def test_periods_count_rope_positions_on_a_temporal_patch_of_two():
    """CogVideoX 1.5 (patch_size_t 2): RoPE advances once per two latent frames, so 21 training latent frames are 11
    positions and 41 test latent frames 21, beyond component 1's period (19.9 positions)."""
    from diffusers import CogVideoXTransformer3DModel

    model = CogVideoXTransformer3DModel(
        num_attention_heads=1, attention_head_dim=64, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=1, sample_width=170, sample_height=96, sample_frames=81, patch_size=2,
        patch_size_t=2, temporal_compression_ratio=4, max_text_seq_length=4, use_rotary_positional_embeddings=True,
    ).eval()
    plan = riflex_plan(model, 21, 41)
    assert (plan.train_frames, plan.test_frames, plan.index) == (11, 21, 1)
    assert plan.lowered and plan.new_omega == pytest.approx(0.9 * 2 * math.pi / 21)
    assert not riflex_plan(model, 21, 37).lowered  # ceil(37 / 2) = 19 positions: within the period


def test_a_model_without_temporal_rope_keeps_it_stock_by_default_and_refuses_riflex_by_name():
    pipe = _Pipe(_cogvideox_5b(rotary=False))  # CogVideoX-2b: no rotary embeddings
    plan = long_video_plan(pipe, 4 * 48 + 1)
    assert plan.rope == "none" and plan.riflex_component is None
    assert plan.rope_note.startswith("RoPE stays stock") and "use_rotary_positional_embeddings" in plan.rope_note
    with pytest.raises(NotImplementedError, match="CogVideoX"):
        long_video_plan(pipe, 4 * 48 + 1, LongVideoConfig(rope="riflex"))


def test_frame_counts_the_vae_cannot_take_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"num_frames=32 .* 4k \+ 1 .*29, 33, 37"):
        long_video_plan(_Pipe(_wan()), 32)


def test_riflex_reaches_every_expert_of_a_two_expert_wan22_pipeline(tmp_path):
    import diffusers

    from attnplug.testing import tiny_pipeline

    base = tiny_pipeline("wan", str(tmp_path))
    torch.manual_seed(0)
    pipe = diffusers.WanPipeline(
        tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, transformer=_wan(),
        transformer_2=_wan(), scheduler=base.scheduler, boundary_ratio=0.5,
    )
    pipe.set_progress_bar_config(disable=True)
    experts = {"transformer": pipe.transformer, "transformer_2": pipe.transformer_2}
    seen = {name: [] for name in experts}
    for name, model in experts.items():
        model.rope.register_forward_hook(lambda m, a, out, name=name: seen[name].append(out[0][0, :, 0].clone()))
    config = LongVideoConfig(train_frames=81, rope="riflex", position_scale=1, temporal_windows=False)
    frames = 4 * 52 + 1  # 53 latent frames, beyond component 5's period (50.96)
    long_video(pipe, "red circle", num_frames=frames, height=16, width=16, num_inference_steps=2,
               guidance_scale=1.0, output_type="latent", generator=torch.Generator().manual_seed(0), config=config)
    p = torch.arange(53, dtype=torch.float64)
    expected = torch.cos(0.9 * 2 * math.pi / 53 * p)
    for name, cos in seen.items():
        assert cos, f"{name} never ran"  # the boundary splits the two steps between the experts
        for c in cos:  # every rotary call of each expert during the call: component 5 lowered
            torch.testing.assert_close(c[:, 10].double(), expected, atol=1e-6, rtol=0)
    assert all(_riflex_hook(model) is None for model in experts.values())  # removed after the call
