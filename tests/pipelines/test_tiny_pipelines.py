"""Full tiny pipelines per family group (SD-like U-Net, image DiT, video DiT): apply, schedule by step, remove."""

import numpy as np
import pytest
import torch

import attnplug
from attnplug.methods.base import AttentionMethod
from attnplug.methods.dense import dense_attention
from attnplug.testing import tiny_pipeline


class StepRecorder(AttentionMethod):
    supports_mask = True

    def __init__(self):
        self.steps = []

    def __call__(self, q, k, v, layout, mask=None, info=None):
        self.steps.append((info.step, info.num_steps))
        return dense_attention(q, k, v, mask, info.scale)


def _run(pipe, name, steps=4):
    kw = dict(prompt="a red circle", num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
              output_type="np", height=32, width=32)
    if name == "pixart":
        kw.update(use_resolution_binning=False, max_sequence_length=16)
    if name == "wan":
        kw.update(num_frames=5, max_sequence_length=16)
    out = pipe(**kw)
    return np.asarray(out.images if hasattr(out, "images") else out.frames)


@pytest.fixture(params=["sd", "pixart", "wan"])
def pipe_and_name(request, tmp_path):
    pipe = tiny_pipeline(request.param, str(tmp_path))
    pipe.set_progress_bar_config(disable=True)
    return pipe, request.param


def test_pipeline_apply_schedule_remove(pipe_and_name):
    pipe, name = pipe_and_name
    stock = _run(pipe, name)

    attnplug.apply(pipe, attnplug.DenseConfig())
    np.testing.assert_allclose(_run(pipe, name), stock, atol=1e-5)

    rec = StepRecorder()
    attnplug.apply(pipe, rec, schedule=attnplug.Schedule(warmup_steps=1, until_step=0.75))
    np.testing.assert_allclose(_run(pipe, name), stock, atol=1e-5)
    assert {s for s, _ in rec.steps} == {1, 2}  # steps 0 (warm-up) and 3 (after 75 % of 4) stay dense
    assert {n for _, n in rec.steps} == {4}

    attnplug.remove(pipe)
    assert np.array_equal(_run(pipe, name), stock)


def test_entry_points_are_functions_and_their_configs_importable_in_any_import_order():
    """``attnplug.pipelines.hires`` / ``long_video`` are the functions however the package was imported; no module
    shares their names (it used to shadow them through a module-class swap) and the package's class is plain."""
    import importlib
    import inspect
    import types

    import attnplug.pipelines as pipelines

    assert type(pipelines) is types.ModuleType
    for name, config in (("hires", "HiResConfig"), ("long_video", "LongVideoConfig")):
        entry = getattr(pipelines, name)
        assert inspect.isfunction(entry) and entry.__name__ == name
        module = importlib.import_module(entry.__module__)
        assert module.__name__ != f"attnplug.pipelines.{name}"
        assert getattr(module, config) is getattr(pipelines, config)
        assert getattr(pipelines, name) is entry  # importing the implementation left the function in place
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(f"attnplug.pipelines.{name}")
