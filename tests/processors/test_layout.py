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
