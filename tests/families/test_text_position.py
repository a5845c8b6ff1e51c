"""A family row's text position is checked against the model, not trusted: when only the text input changes, the
query rows that change at the first joint-attention call are exactly non-grid rows of the layout attnplug reads."""


import pytest

from attnplug.families import FAMILIES, REFUSED
from attnplug.testing_families import has_builder
from attnplug.testing_matrix import changed_rows, class_keys, text_rows

JOINT = [k for k in class_keys() if has_builder(k) and k.split("[")[0] in FAMILIES
         and k.split("[")[0] not in REFUSED and FAMILIES[k.split("[")[0]].text_position != "none"
         and FAMILIES[k.split("[")[0]].non_grid == "text"]
SEPARATE = ["WanTransformer3DModel", "PixArtTransformer2DModel", "LTXVideoTransformer3DModel"]


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


@pytest.mark.parametrize("key, frame_axis, frame, non_grid", [
    ("Kandinsky6Transformer3DModel[i2v]", 1, -1, range(3 * 256, 4 * 256)),  # (B, T, H, W, C): reference last
    ("WanAnimateTransformer3DModel", 2, 0, range(0, 256)),  # (B, C, T, H, W): reference character first
])
def test_reference_frame_rows_are_non_grid_rows(key, frame_axis, frame, non_grid):
    """Models that carry a clean reference frame in the latent frames (Kandinsky 6 image-to-video after the
    generated frames, Wan Animate's character before them): changing only that frame changes exactly the non-grid
    rows of the first self-attention call, never a grid row."""
    def new_reference(inputs):
        x = inputs["hidden_states"].clone()
        x.select(frame_axis, frame).add_(1.0)
        return {"hidden_states": x}

    changed, rows, (_, n) = changed_rows(key, new_reference)
    assert n == 4 * 256 and rows == set(non_grid)
    assert changed == rows


def test_joyimage_edit_plus_reference_images_are_non_grid_rows():
    """JoyImage Edit Plus packs the generated image first, then the reference images: changing only a reference
    image's patches changes only non-grid rows (after the 16 x 16 grid) of the first self-attention call."""
    def new_reference(inputs):
        x = inputs["hidden_states"].clone()
        x[:, 256:352] += 1.0
        return {"hidden_states": x}

    changed, non_grid, _ = changed_rows("JoyImageEditPlusTransformer3DModel", new_reference)
    assert changed and changed <= non_grid and min(non_grid) == 256
