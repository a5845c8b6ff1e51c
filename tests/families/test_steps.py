"""The step tracker follows each family's run: the timestep is read from the input diffusers names it in (HiDream-I1's
``timesteps``, Z-Image's ``t``), a rising timestep (Lumina's ``1 - t / 1000``) starts a run at its lowest value, and a
denoiser without a timestep (aMUSEd) counts one step per call over its pipeline's number of steps, or refuses a
schedule in steps at ``apply`` when nothing gives that number."""

import inspect
from types import SimpleNamespace

import pytest
import torch

import attnplug
from attnplug._steps import TIMESTEP_NAMES, TimestepInput, timestep_input
from attnplug.families import FAMILIES
from attnplug.methods.dense import DenseMethod
from attnplug.testing_families import denoiser_classes, tiny_denoiser
from attnplug.testing_matrix import _forward

RUN = torch.tensor([999.0, 600.0, 200.0])  # a scheduler's falling timesteps, one per step
# class -> (timestep input, what its pipeline passes for the scheduler's timestep t)
FAMILY_TIMESTEPS = {
    "HiDreamImageTransformer2DModel": ("timesteps", lambda t: t),
    "LuminaNextDiT2DModel": ("timestep", lambda t: 1 - t / 1000),
    "Lumina2Transformer2DModel": ("timestep", lambda t: 1 - t / 1000),
    "ZImageTransformer2DModel": ("t", lambda t: (1000 - t) / 1000),
    "FluxTransformer2DModel": ("timestep", lambda t: t / 1000),
}


class StepRecorder(DenseMethod):
    """Dense attention that records the step of each self-attention call (and reads the step)."""

    uses_steps = True

    def __init__(self):
        super().__init__()
        self.steps = []

    def __call__(self, q, k, v, layout=None, mask=None, info=None):
        self.steps.append((info.step, info.num_steps))
        return super().__call__(q, k, v, layout, mask, info)


def _steps_per_call(model, inputs, calls, recorder) -> list[int]:
    """The step each denoiser call ran at: ``calls`` is a list of input overrides, one per call."""
    seen = []
    for changed in calls:
        before = len(recorder.steps)
        _forward(model, {**inputs, **changed})
        steps = {s for s, _ in recorder.steps[before:]}
        assert len(steps) == 1, steps  # every attention call of one denoiser call at one step
        seen.append(steps.pop())
    return seen


@pytest.mark.parametrize("key", sorted(FAMILY_TIMESTEPS))
def test_steps_count_over_a_run_and_restart_at_the_next(key):
    name, passed = FAMILY_TIMESTEPS[key]
    model, inputs = tiny_denoiser(key)
    assert timestep_input(model).name == name and name in inputs
    batch = inputs[name].shape
    recorder = StepRecorder()
    attnplug.apply(model, recorder, schedule=attnplug.Schedule())
    try:
        calls = [{name: passed(t).expand(batch)} for t in RUN for _ in range(2)]  # two guidance passes per step
        assert _steps_per_call(model, inputs, calls + calls, recorder) == [0, 0, 1, 1, 2, 2] * 2
        assert model.__dict__["_attnplug"].runtime.state.steps.pass_index == 1
    finally:
        attnplug.remove(model)


def test_the_rising_families_are_the_ones_whose_pipeline_reverses_the_timestep():
    rising = {cls for cls, spec in FAMILIES.items() if spec.timestep_rises}
    assert rising == {"LuminaNextDiT2DModel", "Lumina2Transformer2DModel", "ZImageTransformer2DModel"}


def test_every_supported_class_but_amused_names_its_timestep_input():
    missing = []
    for cls in denoiser_classes():
        if not any(c.__name__ in FAMILIES for c in cls.__mro__):
            continue  # refused
        if not set(TIMESTEP_NAMES) & set(inspect.signature(cls.forward).parameters):
            missing.append(cls.__name__)
    assert missing == ["UVit2DModel"]


def _amused_pipe(model, steps: int):
    """A stand-in for AmusedPipeline: the transformer and a scheduler set for ``steps`` steps."""
    return SimpleNamespace(transformer=model, scheduler=SimpleNamespace(num_inference_steps=steps),
                           components={"transformer": model})


def test_a_model_without_a_timestep_counts_one_step_per_call_over_its_pipelines_steps():
    model, inputs = tiny_denoiser("UVit2DModel")
    assert timestep_input(model).name is None
    pipe = _amused_pipe(model, 3)
    recorder = StepRecorder()
    attnplug.apply(pipe, recorder, schedule=attnplug.Schedule())
    try:
        assert _steps_per_call(model, inputs, [{}] * 7, recorder) == [0, 1, 2, 0, 1, 2, 0]
        assert {n for _, n in recorder.steps} == {3}
    finally:
        attnplug.remove(pipe)
    attnplug.apply(pipe, "window", schedule=attnplug.Schedule(warmup_steps=1))  # a schedule in steps: accepted
    attnplug.remove(pipe)


def test_a_model_without_a_timestep_refuses_a_schedule_in_steps_without_a_pipeline():
    model, inputs = tiny_denoiser("UVit2DModel")
    for kwargs in ({"schedule": attnplug.Schedule(warmup_steps=1)}, {"steps": (0, 2)}, {}):
        config = attnplug.AgentConfig() if not kwargs else attnplug.WindowConfig()  # agent: 40 % of the steps
        with pytest.raises(ValueError, match=r"UVit2DModel takes no timestep.*schedule=attnplug\.Schedule\(\)"):
            attnplug.apply(model, config, **kwargs)
        assert "_attnplug" not in model.__dict__
    recorder = StepRecorder()
    attnplug.apply(model, recorder, schedule=attnplug.Schedule())  # every step: each call is the next step
    try:
        assert _steps_per_call(model, inputs, [{}] * 4, recorder) == [0, 1, 2, 3]
    finally:
        attnplug.remove(model)


def test_the_timestep_input_has_its_name_position_and_direction():
    """Z-Image's pipeline passes ``t`` positionally (``transformer(latents, timestep, prompt_embeds)``)."""
    expected = {"ZImageTransformer2DModel": TimestepInput("t", 1, True),
                "HiDreamImageTransformer2DModel": TimestepInput("timesteps", 1, False),
                "UVit2DModel": TimestepInput(None, None, False)}
    for key, reader in expected.items():
        assert timestep_input(tiny_denoiser(key)[0]) == reader, key
    assert reader.read((None, torch.tensor([0.25])), {}) is None
    assert expected["ZImageTransformer2DModel"].read(([], torch.tensor([0.25, 0.25])), {}) == 0.25
