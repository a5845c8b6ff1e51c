"""``LongVideoConfig(sparse=SparseVideoConfig(pattern="long"))``: the long-video sparse pattern over the whole video
(no temporal windows), by default in the last quarter of the denoising steps (the first three quarters dense,
``LONG_GLOBAL_STEPS``), from the first step with ``global_steps=0``; composed with RIFLEx, and undone exactly."""

import pytest
import torch

import attnplug
from attnplug.pipelines import LongVideoConfig, long_video
from attnplug.pipelines._long_video.api import resolve_config
from attnplug.pipelines._long_video.config import LONG_GLOBAL_STEPS

LONG = attnplug.SparseVideoConfig(pattern="long", anchor_frames=1, backend="torch")
ARGS = dict(num_frames=17, height=16, width=16, num_inference_steps=4, output_type="pt")


def _frames(out):
    return out.frames if hasattr(out, "frames") else out[0]


def test_the_plan_runs_the_long_pattern_instead_of_the_windows(wan):
    plan = resolve_config(wan, 17, LongVideoConfig(train_frames=5, sparse=LONG))
    assert plan.long_sparse and not plan.temporal_windows and plan.global_steps == LONG_GLOBAL_STEPS
    first = resolve_config(wan, 17, LongVideoConfig(train_frames=5, sparse=LONG, global_steps=0))
    assert first.long_sparse and first.global_steps == 0  # the pattern from the first step
    with pytest.raises(ValueError, match=r"pattern='long'.*temporal_windows=True"):
        resolve_config(wan, 17, LongVideoConfig(train_frames=5, sparse=LONG, temporal_windows=True))
    damped = resolve_config(wan, 17, LongVideoConfig(train_frames=5, sparse=LONG, damping=True))
    assert damped.long_sparse and damped.damping  # composed (tests/pipelines/test_long_video_damped_long.py)


@pytest.mark.parametrize("global_steps,schedule", [(0, attnplug.Schedule()),
                                                   (None, attnplug.Schedule(warmup_steps=LONG_GLOBAL_STEPS))],
                         ids=["from-the-first-step", "default"])
def test_long_video_with_the_long_pattern_equals_the_pattern_applied_by_hand(wan, global_steps, schedule):
    """With RoPE and noise left stock, long_video's run is the pattern applied with the training length as its
    window: on every step with ``global_steps=0``, by default after the first three quarters of the steps (dense); the
    denoiser is stock afterwards."""
    config = LongVideoConfig(train_frames=5, sparse=LONG, rope="none", noise_rescheduling=False,
                             global_steps=global_steps)
    dense_steps = round(LONG_GLOBAL_STEPS * ARGS["num_inference_steps"]) if global_steps is None else 0
    assert dense_steps < ARGS["num_inference_steps"]  # the pattern runs on some step
    if global_steps is None:
        assert schedule.warmup_steps == LONG_GLOBAL_STEPS and dense_steps > 0
    reports = []

    def on_step(p, i, t, kw):
        reports.append(attnplug.stats(p.transformer)["method_report"])
        return kw

    out = _frames(long_video(wan, "red circle", config=config, generator=torch.Generator().manual_seed(0),
                             callback_on_step_end=on_step, **ARGS))
    assert attnplug.method_of(wan.transformer) is None
    assert len(reports) == ARGS["num_inference_steps"] and not reports[-1].get("handed_back")
    calls = [r.get("sparse_calls", 0) for r in reports]  # so far, after each step
    assert all(c == 0 for c in calls[:dense_steps])  # the dense first steps run no pattern call
    assert all(c > (calls[i - 1] if i else 0) for i, c in enumerate(calls) if i >= dense_steps)  # every later step
    by_hand = attnplug.SparseVideoConfig(pattern="long", anchor_frames=1, backend="torch", train_latent_frames=2)
    with attnplug.applied(wan, by_hand, schedule=schedule):
        ref = _frames(wan("red circle", generator=torch.Generator().manual_seed(0), **ARGS))
    stock = _frames(wan("red circle", generator=torch.Generator().manual_seed(0), **ARGS))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert (out - stock).abs().max() > 1e-5  # the pattern changed the attention


def test_the_long_pattern_composes_with_riflex_and_leaves_nothing_behind(wan):
    from attnplug.pipelines._long_video.rope import HOOK_NAME

    seen = []

    def on_step(p, i, t, kw):
        hook = getattr(p.transformer.rope, "_diffusers_hook", None)
        seen.append((hook is not None and hook.get_hook(HOOK_NAME) is not None,
                     type(attnplug.method_of(p.transformer)).__name__))
        return kw

    config = LongVideoConfig(train_frames=5, sparse=LONG, rope="riflex", position_scale=1.0)
    args = {**ARGS, "num_frames": 33}  # 9 latent frames: beyond the period of the tiny model's RIFLEx component
    assert resolve_config(wan, 33, config).rope == "riflex"
    long_video(wan, "red circle", config=config, generator=torch.Generator().manual_seed(0),
               callback_on_step_end=on_step, **args)
    assert seen and all(s == (True, "SparseVideoMethod") for s in seen)
    assert attnplug.method_of(wan.transformer) is None
    registry = getattr(wan.transformer.rope, "_diffusers_hook", None)
    assert (registry is None or not registry.hooks) and "forward" not in wan.transformer.rope.__dict__
