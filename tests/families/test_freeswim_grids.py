"""FreeSwim's default config on tiny models generated at 2x their training grid: every self-attention call of the
windowed branch is windowed (none handed back as ``train-grid-unknown``; the full branch's stay stock on purpose),
with the window read from the training grid of the family table (or the model's config), and each captured call
equals the masked dense neighbourhood reference of its window. On HunyuanVideo, whose joint attention carries a
``(B, 1, 1, N)`` key-padding mask, the padded keys are excluded.

The tiny models are 16 x 16 tokens per frame; the training grid is set to 8 x 8 tokens by shrinking the family's
``train_size`` (or the model's ``sample_height`` / ``sample_width``, CogVideoX), so FreeSwim reads it exactly where
it reads a real checkpoint's."""

import dataclasses

import pytest
import torch

import attnplug
from attnplug import families
from attnplug.families import family_of, training_grid
from attnplug.methods.freeswim import FreeSwimConfig
from attnplug.testing_families import tiny_denoiser
from attnplug.testing_matrix import _forward
from attnplug.testing_reference import CallRecorder, check_calls

TINY, TRAIN = (16, 16), (8, 8)  # tokens per frame of the tiny models, and the training grid they run at 2x of
KEYS = ["FluxTransformer2DModel", "WanTransformer3DModel", "CogVideoXTransformer3DModel",
        "LTXVideoTransformer3DModel", "HunyuanVideoTransformer3DModel"]


def _at_twice_the_training_grid(key: str, monkeypatch) -> tuple[torch.nn.Module, dict]:
    """The tiny ``key`` model whose training grid is :data:`TRAIN` tokens, read from where the model's own is."""
    model, inputs = tiny_denoiser(key)
    spec = family_of(model)
    cls = key.split("[")[0]
    if getattr(model.config, "sample_height", None) is not None:  # CogVideoX: the config's sample size in latents
        patch = model.config.patch_size
        model.register_to_config(sample_height=TRAIN[0] * patch, sample_width=TRAIN[1] * patch)
    else:
        assert spec.train_size is not None, f"{key} has no training size in the family table"
        ppt = spec.pixels_per_token
        monkeypatch.setitem(families.FAMILIES, cls, dataclasses.replace(
            families.FAMILIES[cls], train_size=(TRAIN[0] * ppt, TRAIN[1] * ppt)))
    assert training_grid(model) == (1, *TRAIN)
    return model, inputs


@pytest.mark.parametrize("key", KEYS[:4])
def test_the_model_training_grid_is_the_family_table_one(key):
    model, _ = tiny_denoiser(key)
    spec = family_of(model)
    if spec.train_size is None:  # CogVideoX: sample size in latent pixels, patch size in the config
        expected = (1, model.config.sample_height // model.config.patch_size,
                    model.config.sample_width // model.config.patch_size)
    else:
        expected = (1, spec.train_size[0] // spec.pixels_per_token, spec.train_size[1] // spec.pixels_per_token)
    assert training_grid(model) == expected


@pytest.mark.parametrize("key", KEYS)
def test_freeswim_defaults_window_every_call_at_twice_the_training_grid(key, monkeypatch):
    model, inputs = _at_twice_the_training_grid(key, monkeypatch)
    recorder = CallRecorder(FreeSwimConfig().build())
    attnplug.apply(model, recorder, schedule=attnplug.Schedule())
    try:
        out = _forward(model, inputs)
        self_stats = attnplug.stats(model)["self"]
    finally:
        attnplug.remove(model)
    assert torch.isfinite(out).all()
    # every call of the windowed branch computed; the full branch's calls stay stock on purpose
    full = self_stats["reasons"].get("freeswim-full-branch", 0)
    assert set(self_stats["reasons"]) <= {"freeswim-full-branch"}, self_stats
    assert self_stats["method"] > 0 and self_stats["method"] == self_stats["calls"] - full, self_stats
    call = recorder.calls[0]
    assert call.layout.grid[1:] == TINY and call.info.train_grid == (1, *TRAIN)
    ok, text = check_calls("freeswim", recorder)
    assert ok, text
    if key == "HunyuanVideoTransformer3DModel":  # the padded prompt reached the windowed branch and was honoured
        assert all(c.mask is not None and not c.mask.all() for c in recorder.calls)
