"""A family row's text position is checked against the model, not trusted: when only the text input changes, the
query rows that change at the first joint-attention call are exactly non-grid rows of the layout attnplug reads."""

import logging

import pytest

from attnplug.families import FAMILIES, REFUSED
from attnplug.testing_families import has_builder
from attnplug.testing_matrix import class_keys, text_rows

JOINT = [k for k in class_keys() if has_builder(k) and k.split("[")[0] in FAMILIES
         and k.split("[")[0] not in REFUSED and FAMILIES[k.split("[")[0]].text_position != "none"]
SEPARATE = ["WanTransformer3DModel", "PixArtTransformer2DModel", "LTXVideoTransformer3DModel"]


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("key", JOINT)
def test_text_rows_are_non_grid_rows(key):
    changed, non_grid, (call, n) = text_rows(key)
    assert changed, f"{key}: changing the text changed no query row of self-attention call {call} ({n} tokens)"
    assert changed <= non_grid, f"{key}: grid rows {sorted(changed - non_grid)[:5]} depend on the text"


@pytest.mark.parametrize("key", SEPARATE)
def test_separate_text_changes_no_self_attention_row(key):
    changed, non_grid, _ = text_rows(key)
    assert not changed and not non_grid


@pytest.mark.parametrize("key", ["WanTransformer3DModel[wan21-i2v]", "WanTransformer3DModel[i2v]"])
def test_image_to_video_conditioning_stays_out_of_the_grid(key):
    """Wan I2V: the image condition rides in the latent channels (and, for 2.1, in cross-attention), so
    self-attention holds only grid tokens and the CLIP image tokens change none of its queries."""
    changed, non_grid, (_, n) = text_rows(key, names=("encoder_hidden_states_image", "encoder_hidden_states"))
    assert not changed and not non_grid and n == 3 * 16 * 16
