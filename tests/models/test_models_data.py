"""Synthetic data: seeded, in range, and the shape stays in frame for the whole video."""

import torch

from attnplug.models.data import WORDS, all_image_prompts, sample_images, sample_videos


def test_images_seeded_and_in_range():
    a, pa = sample_images(8, 32, torch.Generator().manual_seed(0))
    b, pb = sample_images(8, 32, torch.Generator().manual_seed(0))
    c, _ = sample_images(8, 32, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and pa == pb
    assert not torch.equal(a, c)
    assert a.shape == (8, 3, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert all(w in WORDS for p in pa for w in p.split())


def test_videos_shape_and_prompts():
    v, p = sample_videos(4, 24, 8, torch.Generator().manual_seed(0))
    assert v.shape == (4, 3, 8, 24, 24)
    assert all(len(s.split()) == 4 and s.split()[2] == "moving" for s in p)
    # the shape never touches the border: border pixels are background in every frame
    border = torch.cat([v[..., 0, :], v[..., -1, :], v[..., :, 0], v[..., :, -1]], dim=-1)
    assert torch.all(border == -1)


def test_all_prompts_count():
    assert len(all_image_prompts()) == 18
