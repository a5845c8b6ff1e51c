"""Hi-res refinement on flow-matching pipelines whose schedule shift grows with the size (Flux, SD3 with dynamic
shifting) starts from a noise level, not a fraction of the steps."""

from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from attnplug.pipelines import HiResConfig, hires
from attnplug.pipelines._hires import plan
from attnplug.pipelines._hires.family import Family
from attnplug.pipelines._hires.schedule import renoise, shifts_with_resolution, train_size_sigma

# FLUX.1-dev's published scheduler config (the resolution-dependent shift)
FLUX_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=3.0,
                      use_dynamic_shifting=True, num_train_timesteps=1000)
FLUX = Family("flux", "transformer", vae_factor=8, input_multiple=2, train_size=(1024, 1024))


def _flux_like():
    return SimpleNamespace(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER))


def _start(pipe, size, steps=28, strength=0.4, start_sigma=None) -> float:
    x0 = torch.zeros(1, 16, size // 8, size // 8)
    _, t0 = renoise(FLUX, pipe, x0, steps, strength, torch.Generator().manual_seed(0), start_sigma=start_sigma)
    return t0 / 1000  # Flux's timesteps are sigma x 1000


def test_a_fraction_of_the_steps_is_a_much_higher_noise_level_at_2048():
    pipe = _flux_like()
    assert shifts_with_resolution(FLUX, pipe)
    at_train, at_2048 = _start(pipe, 1024), _start(pipe, 2048)
    assert 0.6 < at_train < 0.75 and at_2048 > 0.9  # the 6 % of the coarse image kept at 2048^2


def test_the_start_sigma_keeps_the_training_size_noise_level_at_2048():
    pipe = _flux_like()
    sigma = train_size_sigma(FLUX, pipe, 0.4)
    assert abs(sigma - _start(pipe, 1024)) < 0.05
    steps = 28
    start = _start(pipe, 2048, steps=steps, start_sigma=sigma)
    assert start <= sigma
    sched = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    from attnplug.pipelines._hires.schedule import _schedule_kwargs

    sched.set_timesteps(**_schedule_kwargs(FLUX, pipe, steps, (256, 256), "cpu"))
    first = int((sched.sigmas[:steps] <= sigma).nonzero()[0])
    assert first > 0 and sched.sigmas[first - 1] > sigma and abs(start - float(sched.sigmas[first])) < 1e-6


def test_the_plan_states_the_start_sigma_and_a_pipeline_without_shift_refuses_it(tmp_path):
    from attnplug.testing import tiny_pipeline

    pixart = tiny_pipeline("pixart", str(tmp_path))
    p = plan(pixart, 32, 32, HiResConfig())
    assert [s["starts_by"] for s in p.describe()["stages"]] == ["strength"]
    with pytest.raises(ValueError, match=r"start_sigma=0\.5 applies to flow-matching pipelines.*pixart"):
        plan(pixart, 32, 32, HiResConfig(start_sigma=0.5))
    with pytest.raises(ValueError, match=r"start_sigma.*\(0, 1\)"):
        HiResConfig(start_sigma=1.0)


def test_tiny_flux_refines_from_the_start_sigma(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_hires import FAST, _tiny, _tiny_kwargs

    pipe = _tiny("flux", tmp_path)
    cfg = FAST.replace(train_size_px=(16, 16))
    p = plan(pipe, 32, 32, cfg)
    assert p.start_sigmas and p.describe()["stages"][0]["starts_by"] == "sigma"
    assert p.start_sigmas[0] == pytest.approx(train_size_sigma(p.family, pipe, p.strengths[0]))
    out = {}
    for start_sigma in (0.3, 0.9):
        kwargs = {**_tiny_kwargs("flux"), "num_inference_steps": 8}
        out[start_sigma] = hires(pipe, "a red circle", height=32, width=32,
                                 config=cfg.replace(start_sigma=start_sigma), **kwargs).images
    # a lower start keeps more of the coarse stage: the two refinements differ
    assert abs(out[0.3] - out[0.9]).max() > 1e-4
