"""The README's standalone processor is undone by ``attnplug.remove``: the stock processors come back, the output is
the stock output again, and ``set_default_attn_processor`` works after it."""

import numpy as np
import torch

import attnplug
from attnplug.models import load_pipeline


def _image(pipe) -> np.ndarray:
    return pipe("red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                output_type="np").images[0]


def test_remove_restores_the_processors_a_standalone_processor_replaced():
    pipe = load_pipeline("shapes-unet")
    before = {name: type(p) for name, p in pipe.unet.attn_processors.items()}
    stock = _image(pipe)
    pipe.unet.set_attn_processor(attnplug.AttnplugProcessor(attnplug.AgentConfig(agents=4)))
    assert attnplug.stats(pipe)["self"]["calls"] == 0
    changed = _image(pipe)
    assert not np.array_equal(changed, stock)
    attnplug.remove(pipe)
    assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == before
    assert attnplug.stats(pipe) == {}
    assert np.array_equal(_image(pipe), stock)
    pipe.unet.set_default_attn_processor()  # refused while an AttnplugProcessor was in place
    assert np.allclose(_image(pipe), stock, atol=1e-5)  # diffusers' classic AttnProcessor: float-close
