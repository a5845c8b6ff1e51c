"""Token layouts read from latent shapes (U-Net levels, DiT patches, video frames, text position)."""

import pytest
import torch

import attnplug
from attnplug.methods.base import AttentionMethod
from attnplug.testing import forward, tiny_model


class Recorder(AttentionMethod):
    """Records each call's layout and hands the call back to dense attention."""

    supports_mask = True

    def __init__(self):
        self.seen = {}

    def __call__(self, q, k, v, layout, mask=None, info=None):
        layout.check(q.shape[-2])
        self.seen.setdefault(info.layer_name, set()).add(layout)
        return None


def _layouts(family, **kw):
    model, inputs = tiny_model(family, **kw)
    rec = Recorder()
    attnplug.apply(model, rec)
    forward(model, inputs)
    return rec.seen


@pytest.mark.parametrize("size", [(16, 16), (48, 80), (20, 36), (15, 9)])
def test_unet_levels(size):
    h, w = size
    seen = _layouts("unet", height=h, width=w, batch=1)
    layouts = set().union(*seen.values())
    half = (-(-h // 2), -(-w // 2))
    assert layouts == {attnplug.TokenLayout(1, h, w), attnplug.TokenLayout(1, *half)}
    # down_blocks.0 works at full resolution, down_blocks.1 after one downsampling
    assert all(lay.grid == (1, h, w) for n, s in seen.items() if n.startswith("down_blocks.0") for lay in s)
    assert all(lay.grid == (1, *half) for n, s in seen.items() if n.startswith("down_blocks.1") for lay in s)


def test_animatediff_spatial_and_temporal():
    seen = _layouts("animatediff", height=16, width=24, frames=4, batch=1)
    temporal = set().union(*(s for n, s in seen.items() if "motion_modules" in n))
    spatial = set().union(*(s for n, s in seen.items() if "motion_modules" not in n))
    assert temporal == {attnplug.TokenLayout(4, 1, 1)}
    assert spatial == {attnplug.TokenLayout(1, 16, 24), attnplug.TokenLayout(1, 8, 12)}


@pytest.mark.parametrize(
    "family,expected",
    [
        ("pixart", attnplug.TokenLayout(1, 8, 12)),
        ("sd3", attnplug.TokenLayout(1, 8, 12, text_tokens=7, text_first=False)),
        ("flux", attnplug.TokenLayout(1, 8, 12, text_tokens=7, text_first=True)),
        ("wan", attnplug.TokenLayout(3, 8, 12)),
        ("cogvideox", attnplug.TokenLayout(3, 8, 12, text_tokens=7, text_first=True)),
        ("hunyuanvideo", attnplug.TokenLayout(3, 8, 12, text_tokens=7, text_first=False)),
        ("ltx", attnplug.TokenLayout(3, 8, 12)),
    ],
)
def test_dit_layouts(family, expected):
    seen = _layouts(family, height=16, width=24, frames=3, text=7, batch=2)
    assert set().union(*seen.values()) == {expected}


def test_layout_split_merge_roundtrip():
    lay = attnplug.TokenLayout(2, 3, 4, text_tokens=5, text_first=True)
    x = torch.randn(2, 3, lay.num_tokens, 8)
    img, txt = lay.split(x)
    assert img.shape[-2] == 24 and txt.shape[-2] == 5
    assert torch.equal(lay.merge(img, txt), x)
    y = lay.to_text_last(x)
    assert torch.equal(y[..., :24, :], img) and torch.equal(y[..., 24:, :], txt)
    assert torch.equal(lay.from_text_last(y), x)


def test_layout_mismatch_names_both_numbers():
    lay = attnplug.TokenLayout(1, 4, 4, text_tokens=3)
    with pytest.raises(ValueError, match=r"19 tokens.*20 tokens"):
        lay.check(20)
    with pytest.raises(ValueError, match="positive int"):
        attnplug.TokenLayout(1, 0, 4)
    with pytest.raises(ValueError, match="not a square"):
        attnplug.TokenLayout.square(12)


def test_explicit_layout_mismatch_in_standalone_processor():
    model, inputs = tiny_model("pixart", height=16, width=16)
    model.set_attn_processor(attnplug.AttnplugProcessor(attnplug.DenseConfig(), layout=attnplug.TokenLayout(1, 5, 5)))
    with pytest.raises(ValueError, match=r"25 tokens.*64 tokens"):
        forward(model, inputs)


def test_grid_unmatched_sequence_says_both_numbers():
    from attnplug.layout import FAMILIES, LayoutState

    state = LayoutState(FAMILIES["WanTransformer3DModel"], grid=(2, 4, 4))
    with pytest.raises(ValueError, match=r"31 tokens.*\(2, 4, 4\)"):
        state.layout_for(31, "blocks.0.attn1")


def test_temporal_modules_take_a_window_of_the_frames():
    """diffusers' FreeNoise runs AnimateDiff's motion modules on windows of the frames: a temporal call may see
    fewer frames than the latent, never more."""
    from attnplug.layout import FAMILIES, LayoutState

    state = LayoutState(FAMILIES["UNetMotionModel"], grid=(32, 8, 8))
    assert state.layout_for(16, "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1").grid == (16, 1, 1)
    assert state.layout_for(32, "mid_block.motion_modules.0.attn1").grid == (32, 1, 1)
    with pytest.raises(ValueError, match="got 33 tokens but the latent has only 32 frames"):
        state.layout_for(33, "up_blocks.1.motion_modules.0.attn1")


# ----------------------------------------------------------------------------------------------------
# The grid reader and the family module: refusals name the class and what is unknown.


class _Fake(torch.nn.Module):
    """A stand-in denoiser: only its class name and config matter to the readers."""

    def __init__(self, **config):
        super().__init__()
        self.config = type("Config", (), config)()


def test_position_ids_reader_reads_3_and_4_axis_ids():
    from attnplug.layout_reader import grid_position_ids

    rows, cols = torch.meshgrid(torch.arange(3), torch.arange(5), indexing="ij")
    ids3 = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
    assert grid_position_ids(_Fake(), (), {"img_ids": ids3}) == (1, 3, 5)
    ids4 = torch.cat([torch.zeros(15, 1), ids3[:, 1:], torch.zeros(15, 1)], -1)[None].expand(2, -1, -1)
    assert grid_position_ids(_Fake(), (), {"img_ids": ids4}) == (1, 3, 5)


def test_position_ids_that_are_not_one_grid_are_refused():
    from attnplug.layout_reader import grid_position_ids

    ids = torch.zeros(16, 3)
    ids[:15, 1], ids[:15, 2] = torch.arange(15) // 5, torch.arange(15) % 5
    ids[15] = torch.tensor([1.0, 0.0, 0.0])  # a reference-image token at another time offset
    with pytest.raises(ValueError, match="_Fake: the position ids `img_ids` span the grid"):
        grid_position_ids(_Fake(), (), {"img_ids": ids})


def test_img_shapes_reader_refuses_several_grids_per_sample():
    from attnplug.layout_reader import grid_img_shapes

    assert grid_img_shapes(_Fake(), (), {"img_shapes": [[(1, 4, 6)], [(1, 4, 6)]]}) == (1, 4, 6)
    with pytest.raises(ValueError, match="_Fake was called with 2 image grids per sample"):
        grid_img_shapes(_Fake(), (), {"img_shapes": [[(1, 4, 6), (1, 4, 6)]]})
    with pytest.raises(ValueError, match="without `img_shapes`"):
        grid_img_shapes(_Fake(), (), {})


def test_unequal_caption_lengths_are_refused():
    from attnplug.layout_reader import grid_image_4d_equal_captions

    model, x = _Fake(patch_size=2), torch.zeros(2, 4, 8, 12)
    same = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert grid_image_4d_equal_captions(model, (), {"hidden_states": x, "encoder_attention_mask": same}) == (1, 4, 6)
    with pytest.raises(ValueError, match=r"different valid lengths \[2, 3\]"):
        grid_image_4d_equal_captions(model, (), {"hidden_states": x,
                                                 "encoder_attention_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])})


def test_unknown_and_refused_classes_are_refused_naming_the_class_and_the_reason():
    from attnplug.families import family_of

    with pytest.raises(TypeError, match="does not know the model class _Fake: how its token grid follows"):
        family_of(_Fake())
    sana = type("SanaTransformer2DModel", (_Fake,), {})()
    with pytest.raises(TypeError, match="SanaTransformer2DModel: its self-attention is linear"):
        family_of(sana)


def test_training_grid_from_the_family_training_size_and_variants():
    from attnplug.families import family_of, training_grid

    flux = type("FluxTransformer2DModel", (_Fake,), {})(patch_size=1)
    assert training_grid(flux) == (1, 64, 64)  # 1024 px at 16 px per token
    wan = type("WanTransformer3DModel", (_Fake,), {})(patch_size=(1, 2, 2), in_channels=16)
    assert training_grid(wan) == (1, 30, 52)  # 480 x 832
    ti2v = type("WanTransformer3DModel", (_Fake,), {})(patch_size=(1, 2, 2), in_channels=48)
    assert training_grid(ti2v) == (1, 22, 40) and family_of(ti2v).train_frames == 121  # Wan 2.2 TI2V-5B
    cogvideox = type("CogVideoXTransformer3DModel", (_Fake,), {})(patch_size=2, sample_height=60, sample_width=90)
    assert training_grid(cogvideox) == (1, 30, 45)
    ltx = type("LTXVideoTransformer3DModel", (_Fake,), {})(patch_size=1)
    assert training_grid(ltx) == (1, 16, 24)  # 512 x 768 at 32 px per token


def test_layout_reexports_the_moved_names():
    import attnplug.families as families
    import attnplug.layout as layout

    for name in ("FAMILIES", "FamilySpec", "family_of", "latent_level", "training_grid"):
        assert getattr(layout, name) is getattr(families, name)
