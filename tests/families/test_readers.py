"""The grid readers of the newer families read the generated grid from the call's shapes and refuse, naming the
class and the input, the calls whose tokens one layout cannot describe (never a guessed grid)."""

from types import SimpleNamespace

import pytest
import torch

from attnplug.families import FAMILIES
from attnplug.layout_reader import grid_first_shape, grid_joint_position_ids, grid_video_bthwc_tail


def _model(name: str, **config):
    cls = type(name, (), {})
    model = cls()
    model.config = SimpleNamespace(**config)
    return model


def _ids(h: int, w: int) -> torch.Tensor:
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(-1, 3)


def test_flux3_reads_its_image_ids_and_refuses_reference_images():
    grid = FAMILIES["Flux3Transformer2DModel"].grid
    model = _model("Flux3Transformer2DModel")
    ids = torch.zeros(6 * 5, 4)
    ids[:, 1] = torch.arange(6).repeat_interleave(5)
    ids[:, 2] = torch.arange(5).repeat(6)
    assert grid(model, (), {"img_ids": ids}) == (1, 6, 5)
    with pytest.raises(ValueError, match="Flux3Transformer2DModel was called with `image_cond_hidden_states`"):
        grid(model, (), {"img_ids": ids, "image_cond_hidden_states": torch.zeros(1, 4, 8)})


def test_krea2_reads_the_image_tail_of_its_joint_ids():
    model = _model("Krea2Transformer2DModel")
    ids = torch.cat([torch.zeros(7, 3), _ids(4, 6)])
    assert grid_joint_position_ids(model, (), {"position_ids": ids, "hidden_states": torch.zeros(1, 24, 8)}) == (
        1, 4, 6)
    with pytest.raises(ValueError, match="Krea2Transformer2DModel: the position ids `position_ids` span"):
        grid_joint_position_ids(model, (), {"position_ids": ids, "hidden_states": torch.zeros(1, 25, 8)})


def test_kandinsky_readers_keep_trailing_reference_frames_out_and_refuse_the_rest():
    model = _model("Kandinsky6Transformer3DModel", patch_size=(1, 2, 2))
    x = torch.zeros(1, 4, 8, 10, 9)  # (B, T, H, W, C)
    assert grid_video_bthwc_tail(model, (), {"hidden_states": x}) == (4, 4, 5)
    assert grid_video_bthwc_tail(model, (), {"hidden_states": x, "visual_token_type_ids": torch.tensor([[0, 0, 0, 1]])}
                                 ) == (3, 4, 5)
    with pytest.raises(ValueError, match=r"Kandinsky6Transformer3DModel .* at frames \[1\] of 4"):
        grid_video_bthwc_tail(model, (), {"hidden_states": x, "visual_token_type_ids": torch.tensor([[0, 1, 0, 0]])})
    kandinsky5 = _model("Kandinsky5Transformer3DModel", patch_size=(1, 2, 2))
    with pytest.raises(ValueError, match="Kandinsky5Transformer3DModel was called with `sparse_params`"):
        FAMILIES["Kandinsky5Transformer3DModel"].grid(kandinsky5, (), {"hidden_states": x, "sparse_params": {}})


def test_wan_animate_grid_is_the_posed_frames():
    grid = FAMILIES["WanAnimateTransformer3DModel"].grid
    model = _model("WanAnimateTransformer3DModel", patch_size=(1, 2, 2))
    x = torch.zeros(1, 12, 4, 8, 6)
    assert grid(model, (), {"hidden_states": x, "pose_hidden_states": torch.zeros(1, 4, 3, 8, 6)}) == (3, 4, 3)
    with pytest.raises(ValueError, match="WanAnimateTransformer3DModel was called without `pose_hidden_states`"):
        grid(model, (), {"hidden_states": x})


def test_joyimage_edit_plus_grid_is_the_first_shape_of_every_sample():
    model = _model("JoyImageEditPlusTransformer3DModel")
    assert grid_first_shape(model, (), {"shape_list": [[(1, 8, 6), (1, 4, 4)], [(1, 8, 6)]]}) == (1, 8, 6)
    with pytest.raises(ValueError, match=r"JoyImageEditPlusTransformer3DModel .* different sizes"):
        grid_first_shape(model, (), {"shape_list": [[(1, 8, 6)], [(1, 6, 8)]]})
