"""``LongVideoConfig.sparse="auto"`` (the default): the long-video sparse pattern over the whole video on video DiTs
beyond the training length, in the last quarter of the denoising steps (the first three quarters dense,
``LONG_GLOBAL_STEPS``; from the first step with ``global_steps=0``), exactly as
``sparse=SparseVideoConfig(pattern="long")``; no pattern at the training length; ``sparse=None`` gives the recipe
without it (windows beyond 2x in the last quarter of the steps); where ``"auto"`` does not choose it the plan's
``sparse_note`` says why."""

import dataclasses
import json

import diffusers
import pytest
import torch

import attnplug
from attnplug.pipelines import LongVideoConfig, long_video, long_video_plan
from attnplug.pipelines._long_video import describe
from attnplug.pipelines._long_video.api import attention_method
from attnplug.pipelines._long_video.attention import TemporalWindowMethod
from attnplug.pipelines._long_video.config import LONG_GLOBAL_STEPS
from attnplug.pipelines._long_video.damping import FrameDampingMethod
from attnplug.testing import forward, tiny_model

LONG = attnplug.SparseVideoConfig(pattern="long")
AT_4X = 29  # video frames: 8 latent frames at the tiny Wan's 4x temporal compression, 4x the 2 of train_frames=5
ARGS = dict(height=16, width=16, num_inference_steps=4, output_type="pt")


def _frames(out):
    return out.frames if hasattr(out, "frames") else out[0]


def _left_behind(model) -> list[str]:
    """Modules of ``model`` that still carry a hook or an instance ``forward`` (the empty registry that diffusers'
    ``cache_context`` puts on the denoiser is the pipeline's own)."""
    return [name or "<root>" for name, m in model.named_modules()
            if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.hooks or "forward" in m.__dict__]


def test_the_default_plan_at_4x_runs_the_long_pattern_after_dense_first_steps(wan):
    config = LongVideoConfig(train_frames=5)
    assert config.sparse == "auto" and config.global_steps is None
    plan = long_video_plan(wan, AT_4X, config)
    assert plan.extension == 4 and plan.long_sparse and not plan.temporal_windows
    assert plan.global_steps == LONG_GLOBAL_STEPS  # the first three quarters of the steps dense
    # global_steps=0: the same pattern from the first step
    first = long_video_plan(wan, AT_4X, LongVideoConfig(train_frames=5, global_steps=0))
    assert first.global_steps == 0 and dataclasses.replace(first, global_steps=plan.global_steps) == plan
    assert plan.sparse == dataclasses.replace(LONG, train_latent_frames=2)  # its own defaults, the training length
    assert plan.sparse_note.startswith("the 'long' sparse pattern over the whole video after the dense first steps")
    assert "sparse='auto'" in plan.sparse_note
    # the same plan as the pattern given by hand (only the note says where it came from)
    explicit = long_video_plan(wan, AT_4X, LongVideoConfig(train_frames=5, sparse=LONG))
    assert dataclasses.replace(explicit, sparse_note=plan.sparse_note) == plan
    assert "as given" in explicit.sparse_note
    # the report shows which pattern runs
    described = json.loads(json.dumps(describe(plan)))
    assert described["long_sparse"] and described["sparse"]["pattern"] == "long"
    assert described["sparse"]["train_latent_frames"] == 2 and described["sparse_note"] == plan.sparse_note


def test_at_the_training_length_auto_picks_no_pattern(wan):
    plan = long_video_plan(wan, 5, LongVideoConfig(train_frames=5))
    assert plan.extension == 1 and plan.sparse is None and not plan.long_sparse and not plan.temporal_windows
    assert plan.global_steps == 0 and plan.rope == "none"
    assert "not longer than the training length" in plan.sparse_note


def test_sparse_none_gives_the_recipe_without_a_pattern(wan):
    plan = long_video_plan(wan, AT_4X, LongVideoConfig(train_frames=5, sparse=None))
    assert plan.sparse is None and not plan.long_sparse and plan.sparse_note == "no sparse pattern (sparse=None)"
    assert plan.temporal_windows and (plan.window, plan.stride) == (2, 1) and plan.global_steps == 0.75
    at2 = long_video_plan(wan, 13, LongVideoConfig(train_frames=5, sparse=None))  # 4 latent frames: 2x
    assert not at2.temporal_windows and at2.sparse is None and at2.global_steps == 0
    assert long_video_plan(wan, 13, LongVideoConfig(train_frames=5)).long_sparse  # the default from beyond 1x


def test_auto_keeps_the_windows_the_config_asks_for(wan):
    asked = long_video_plan(wan, AT_4X, LongVideoConfig(train_frames=5, temporal_windows=True))
    assert asked.temporal_windows and asked.sparse is None and asked.global_steps == 0.75
    assert "temporal_windows=True" in asked.sparse_note
    shaped = long_video_plan(wan, AT_4X, LongVideoConfig(train_frames=5, window_frames=9, stride_frames=5))
    assert shaped.temporal_windows and (shaped.window, shaped.stride) == (3, 2) and shaped.sparse is None
    assert "window_frames=9, stride_frames=5" in shaped.sparse_note and shaped.global_steps == 0.75


def test_damping_composes_with_the_default_pattern(wan):
    damped = long_video_plan(wan, AT_4X, LongVideoConfig(train_frames=5, damping=True))
    assert damped.damping and damped.long_sparse and not damped.temporal_windows
    assert damped.global_steps == LONG_GLOBAL_STEPS
    dense = long_video_plan(wan, AT_4X, LongVideoConfig(train_frames=5, damping=True, sparse=None))
    assert dense.damping and not dense.long_sparse and dense.sparse is None and not dense.temporal_windows
    with pytest.raises(ValueError, match=r"damping runs dense attention.*temporal_windows=True"):
        long_video_plan(wan, AT_4X, LongVideoConfig(train_frames=5, damping=True, temporal_windows=True))


def test_any_other_string_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"LongVideoConfig\.sparse='bogus' is not accepted: give 'auto' .*None"
                                         r".*SparseVideoConfig"):
        LongVideoConfig(sparse="bogus")
    with pytest.raises(TypeError, match=r"LongVideoConfig\.sparse must be 'auto', None or a SparseVideoConfig"):
        LongVideoConfig(sparse=0.25)
    assert LongVideoConfig().replace(sparse=None).sparse is None


def test_a_default_run_at_4x_runs_the_pattern_then_leaves_the_denoiser_stock(wan):
    reports = []

    def on_step(p, i, t, kw):
        st = attnplug.stats(p.transformer)
        reports.append((type(attnplug.method_of(p.transformer)).__name__, st["self"], st["method_report"]))
        return kw

    steps = ARGS["num_inference_steps"]
    dense = round(LONG_GLOBAL_STEPS * steps)  # rounded like Schedule(warmup_steps=LONG_GLOBAL_STEPS)
    assert 0 < dense < steps  # the call has dense steps and pattern steps
    out = _frames(long_video(wan, "red circle", num_frames=AT_4X, config=LongVideoConfig(train_frames=5),
                             generator=torch.Generator().manual_seed(0), callback_on_step_end=on_step, **ARGS))
    assert len(reports) == steps
    assert all(name == "SparseVideoMethod" for name, _, _ in reports)
    assert all(r["pattern"] == "long" for _, _, r in reports)
    # the dense first steps: every self-attention call stock, no pattern call
    for _, calls, report in reports[:dense]:
        assert calls["calls"] > 0 and calls["stock"] == calls["calls"] and calls["method"] == 0
        assert report.get("sparse_calls", 0) == 0
    # then the pattern on every later step
    so_far = [r.get("sparse_calls", 0) for _, _, r in reports]
    assert all(so_far[i] > so_far[i - 1] for i in range(dense, steps))
    last = reports[-1][2]
    assert not last.get("handed_back")
    assert attnplug.method_of(wan.transformer) is None and _left_behind(wan.transformer) == []
    from_first = _frames(long_video(wan, "red circle", num_frames=AT_4X,
                                    config=LongVideoConfig(train_frames=5, global_steps=0),
                                    generator=torch.Generator().manual_seed(0), **ARGS))
    assert (out - from_first).abs().max() > 1e-5  # the dense first steps changed the video
    explicit = _frames(long_video(wan, "red circle", num_frames=AT_4X,
                                  config=LongVideoConfig(train_frames=5, sparse=LONG),
                                  generator=torch.Generator().manual_seed(0), **ARGS))
    assert torch.equal(out, explicit)
    without = _frames(long_video(wan, "red circle", num_frames=AT_4X,
                                 config=LongVideoConfig(train_frames=5, sparse=None),
                                 generator=torch.Generator().manual_seed(0), **ARGS))
    assert (out - without).abs().max() > 1e-5  # the pattern changed the attention


class _Pipe:
    """A stand-in video pipeline around one denoiser: what ``long_video_plan`` reads; it never generates."""

    vae_scale_factor_temporal = 4

    def __init__(self, transformer):
        self.transformer = transformer

    def __call__(self, prompt=None, num_frames: int = 49, **kwargs):
        raise AssertionError("long_video_plan does not call the pipeline")


def _cogvideox15():
    """CogVideoX 1.5's temporal patch of two latent frames (``patch_size_t=2``)."""
    return diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=1, attention_head_dim=64, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=1, sample_width=16, sample_height=16, sample_frames=81, patch_size=2,
        patch_size_t=2, temporal_compression_ratio=4, max_text_seq_length=4, use_rotary_positional_embeddings=True,
    ).eval()


@pytest.mark.parametrize("family", ["wan", "hunyuanvideo", "cogvideox"])
def test_auto_chooses_the_long_pattern_on_video_dits_and_it_runs_on_their_self_attention(family):
    """HunyuanVideo (text last, a key-padding mask on every call) and CogVideoX (text first) have text tokens in
    self-attention: the pattern keeps them global and runs every self-attention call."""
    model, inputs = tiny_model(family, frames=8, batch=1)
    plan = long_video_plan(_Pipe(model), 4 * 7 + 1, LongVideoConfig(train_frames=5))  # 8 latent frames, 4x
    assert plan.family == family and plan.long_sparse and not plan.temporal_windows
    assert plan.global_steps == LONG_GLOBAL_STEPS
    # the pattern on every call, as long_video runs it on its steps (every step with global_steps=0)
    every = long_video_plan(_Pipe(model), 4 * 7 + 1, LongVideoConfig(train_frames=5, global_steps=0))
    assert every.global_steps == 0 and every.sparse == plan.sparse
    with attnplug.applied(model, every.sparse, schedule=attnplug.Schedule(warmup_steps=every.global_steps)):
        forward(model, inputs)
        stats = attnplug.stats(model)
    report = stats["method_report"]
    assert stats["self"]["calls"] > 0 and stats["self"]["method"] == stats["self"]["calls"]
    assert report["sparse_calls"] == stats["self"]["calls"] and not report.get("handed_back")


def test_where_auto_does_not_choose_the_pattern_the_plan_says_why():
    # CogVideoX 1.5: one token frame per two latent frames; the pattern's window would span twice the training
    # length, so auto keeps the recipe without it (windows beyond 2x)
    cog15 = long_video_plan(_Pipe(_cogvideox15()), 4 * 20 + 1, LongVideoConfig(train_frames=21))  # 21 latent: ~3.5x
    assert cog15.family == "cogvideox" and cog15.sparse is None and not cog15.long_sparse
    assert cog15.temporal_windows and cog15.global_steps == 0.75
    assert "sparse='auto' keeps the recipe without it" in cog15.sparse_note and "patch_size_t=2" in cog15.sparse_note
    given = long_video_plan(_Pipe(_cogvideox15()), 4 * 20 + 1, LongVideoConfig(train_frames=21, sparse=LONG))
    assert given.long_sparse  # given by hand it still runs
    # LTX keeps its default (RoPE rescaling alone)
    ltx, _ = tiny_model("ltx", frames=8, batch=1)
    plan = long_video_plan(_Pipe(ltx), 4 * 7 + 1, LongVideoConfig(train_frames=5))
    assert plan.sparse is None and not plan.temporal_windows and "ltx keeps its default" in plan.sparse_note


def test_windows_and_damping_count_token_frames_under_a_temporal_patch():
    """CogVideoX 1.5 (patch_size_t=2): the methods see token frames, so the plan's training-length window of 21
    latent frames runs as 11 token frames (as many as a training clip has), its stride of 10 as 5, and the damping
    distance likewise; counted as token frames they would span twice the training length."""
    model = _cogvideox15()
    plan = long_video_plan(_Pipe(model), 4 * 83 + 1, LongVideoConfig())  # 84 latent frames, 4x
    assert plan.temporal_windows and plan.train_latent == 21 and (plan.window, plan.stride) == (21, 10)
    method = attention_method(model, plan, LongVideoConfig())
    assert isinstance(method, TemporalWindowMethod) and (method.window, method.stride) == (11, 5)
    damped_cfg = LongVideoConfig(damping=True)
    damped = attention_method(model, long_video_plan(_Pipe(model), 4 * 83 + 1, damped_cfg), damped_cfg)
    assert isinstance(damped, FrameDampingMethod) and damped.window == 11
    # without a temporal patch the lengths are the plan's own
    wan, _ = tiny_model("wan", frames=8, batch=1)
    cfg = LongVideoConfig(train_frames=5, sparse=None)
    wan_plan = long_video_plan(_Pipe(wan), 4 * 7 + 1, cfg)
    windows = attention_method(wan, wan_plan, cfg)
    assert (windows.window, windows.stride) == (wan_plan.window, wan_plan.stride) == (2, 1)
