"""Every method with its defaults, on each embedded model at 2x its training size, runs where its docs say: the
output differs from stock, the counters agree with what ran, and a method that ran on nothing would warn."""

import pytest
import torch

import attnplug
from attnplug.models import load_pipeline

IMAGE_METHODS = ["agent", "neighborhood", "window", "freeswim"]
STEPS = 3


@pytest.fixture(scope="module")
def pipes():
    return {name: load_pipeline(name) for name in ("shapes-unet", "shapes-dit", "shapes-video")}


def _generate(pipe, video: bool):
    size = 2 * pipe.sample_defaults["height"]
    kwargs = dict(num_inference_steps=STEPS, height=size, width=size, output_type="pt",
                  generator=torch.Generator().manual_seed(0))
    if video:
        out = pipe("red circle moving right", num_frames=2 * pipe.sample_defaults.get("num_frames", 8), **kwargs)
        return out.frames
    return pipe("red circle", **kwargs).images


@pytest.mark.parametrize("method", IMAGE_METHODS)
@pytest.mark.parametrize("model", ["shapes-unet", "shapes-dit"])
def test_image_method_defaults_run_at_2x(pipes, model, method):
    pipe = pipes[model]
    stock = _generate(pipe, video=False)
    with attnplug.applied(pipe, method):
        out = _generate(pipe, video=False)
        st = attnplug.stats(pipe)
    assert st["self"]["method"] > 0, st  # ran somewhere, with its defaults
    assert st["self"]["method"] + st["self"]["stock"] == st["self"]["calls"]
    assert sum(st["self"]["reasons"].values()) == st["self"]["stock"]
    assert not torch.allclose(out, stock, atol=1e-4), "the method changed nothing"


@pytest.mark.parametrize("method", ["sparse_video", "neighborhood"])
def test_video_method_defaults_run_at_2x(pipes, method):
    pipe = pipes["shapes-video"]
    stock = _generate(pipe, video=True)
    with attnplug.applied(pipe, method):
        out = _generate(pipe, video=True)
        st = attnplug.stats(pipe)
    assert st["self"]["method"] > 0, st
    assert st["self"]["method"] + st["self"]["stock"] == st["self"]["calls"]
    assert not torch.allclose(out, stock, atol=1e-4)
