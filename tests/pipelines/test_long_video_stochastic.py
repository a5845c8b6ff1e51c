"""Long video with a stochastic flow-match scheduler: every step's fresh noise is FreeNoise noise, the update is the
scheduler's own, and the scheduler is stock again afterwards."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from attnplug.models import load_pipeline
from attnplug.pipelines import LongVideoConfig, long_video
from attnplug.pipelines._long_video import noise as noise_module
from attnplug.pipelines._long_video.noise import is_stochastic_flow_scheduler, rescheduled_step_noise


def _scheduler(stochastic: bool, steps: int = 4) -> FlowMatchEulerDiscreteScheduler:
    s = FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=stochastic)
    s.set_timesteps(steps)
    return s


def test_only_stochastic_flow_schedulers_are_recognised():
    assert is_stochastic_flow_scheduler(_scheduler(True))
    assert not is_stochastic_flow_scheduler(_scheduler(False))
    assert not is_stochastic_flow_scheduler(None)


@pytest.mark.parametrize("step_index", [0, 2])
def test_one_window_equals_the_scheduler_own_stochastic_step(step_index):
    """With the window as long as the video, FreeNoise noise is plain noise: the wrapped step is bit-identical to
    diffusers' stochastic step drawing from an identically seeded generator."""
    x, v = torch.randn(1, 3, 8, 4, 4), torch.randn(1, 3, 8, 4, 4)
    stock, wrapped = _scheduler(True), _scheduler(True)
    for s in (stock, wrapped):
        s.set_begin_index(0)
        s._step_index = step_index
    t = stock.timesteps[step_index]
    expected = stock.step(v, t, x, generator=torch.Generator().manual_seed(5), return_dict=False)[0]
    with rescheduled_step_noise(wrapped, 2, 8, torch.Generator().manual_seed(5)):
        got = wrapped.step(v, t, x).prev_sample
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert wrapped.step_index == step_index + 1


def test_shorter_window_repeats_the_step_noise_and_restores_the_scheduler():
    x, v = torch.randn(1, 3, 12, 4, 4), torch.randn(1, 3, 12, 4, 4)
    s = _scheduler(True)
    t = s.timesteps[0]
    with rescheduled_step_noise(s, 2, 4, torch.Generator().manual_seed(0)):
        out = s.step(v, t, x, return_dict=False)[0]
    assert "step" not in vars(s)  # the class's step again
    sigma, sigma_next = s.sigmas[0], s.sigmas[1]
    n = (out - (1 - sigma_next) * (x - sigma * v)) / sigma_next
    base = n[:, :, :4].flatten(3)
    for start in (4, 8):  # each later window holds the first window's frames, shuffled
        block = n[:, :, start:start + 4].flatten(3)
        match = torch.cdist(block[0].transpose(0, 1).flatten(1), base[0].transpose(0, 1).flatten(1))
        assert torch.all(match.min(dim=1).values < 1e-4)


def test_long_video_uses_it_only_with_a_stochastic_scheduler(monkeypatch):
    pipe = load_pipeline("shapes-video")
    calls = []
    real = noise_module.rescheduled_step_noise

    def spy(*args, **kwargs):
        calls.append(args[1:3])
        return real(*args, **kwargs)

    monkeypatch.setattr("attnplug.pipelines._long_video.api.rescheduled_step_noise", spy)
    config = LongVideoConfig(noise_rescheduling=True)
    long_video(pipe, "red circle moving right", num_frames=16, config=config, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0))
    assert calls == []
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, stochastic_sampling=True)
    a, b = (long_video(pipe, "red circle moving right", num_frames=16, config=config, num_inference_steps=2,
                       generator=torch.Generator().manual_seed(0), output_type="pt").frames for _ in range(2))
    assert calls == [(2, 8), (2, 8)]  # frames axis of (B, C, F, H, W), the 8 training frames
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # every step's noise comes from the generator
    assert "step" not in vars(pipe.scheduler)


def test_local_attention_with_a_stochastic_scheduler_warns(caplog):
    from attnplug.pipelines._long_video.api import STOCHASTIC_LOCAL_ATTENTION_WARNING

    pipe = load_pipeline("shapes-video")
    run = dict(num_frames=16, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    with caplog.at_level("WARNING", logger="attnplug"):
        long_video(pipe, "red circle moving right", **run)
    assert STOCHASTIC_LOCAL_ATTENTION_WARNING not in caplog.text
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, stochastic_sampling=True)
    with caplog.at_level("WARNING", logger="attnplug"):
        long_video(pipe, "red circle moving right", config=LongVideoConfig(sparse=None, temporal_windows=False), **run)
    assert STOCHASTIC_LOCAL_ATTENTION_WARNING not in caplog.text
    with caplog.at_level("WARNING", logger="attnplug"):
        long_video(pipe, "red circle moving right", **run)
    assert STOCHASTIC_LOCAL_ATTENTION_WARNING in caplog.text
