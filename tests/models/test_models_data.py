"""Synthetic data: seeded, in range, and the shape stays in frame for the whole video."""

import dataclasses

import pytest
import torch

from attnplug.models.data import (
    WORDS,
    MotionSpec,
    all_image_prompts,
    expected_speed_range,
    sample_images,
    sample_videos,
)
from attnplug.pipelines._long_video.config import default_position_scale as default_divisor


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


def _v2_motion():
    from attnplug.models.build import read_config
    from attnplug.models.catalog import MODELS_DIR

    cfg = read_config(MODELS_DIR / "shapes-video" / "config.json")
    return cfg, MotionSpec.from_config(cfg["data"])


def test_v2_paths_stay_in_frame_and_a_4x_video_interpolated_by_the_default_divisor_can_be_steady():
    """Every sampled speed and size: the whole training path stays inside the frame; and a 32-frame path (4x the 8
    training frames) at a training speed divided by the long-video defaults' position divisor at 4x
    (``POSITION_SCALE`` x 4) stays inside it too while moving at >= 0.2 px/frame, the detector's steady criterion."""
    cfg, motion = _v2_motion()
    divisor = default_divisor(4)
    size, frames = cfg["sample"]["height"], cfg["sample"]["num_frames"]
    assert frames < motion.path_frames < 4 * frames
    lo, hi = expected_speed_range(size, motion)
    assert lo * (frames - 1) >= 1.4 and lo >= 0.2  # steady at the training length on the detector's criteria
    assert lo / divisor >= 0.2  # still steady when the default interpolation slows it
    slowed = dataclasses.replace(motion, speed=(motion.speed[0] / divisor, motion.speed[1] / divisor),
                                 path_frames=4 * frames)
    for spec, path in ((motion, motion.path_frames), (slowed, 4 * frames)):
        v, _ = sample_videos(64, size, path, torch.Generator().manual_seed(0), spec)
        border = torch.cat([v[..., 0, :], v[..., -1, :], v[..., :, 0], v[..., :, -1]], dim=-1)
        assert torch.all(border == -1)
        # the worst case of the ranges fits too: the fastest speed with the largest shape
        worst = dataclasses.replace(spec, radius=(spec.radius[1],) * 2, speed=(spec.speed[1],) * 2)
        w, _ = sample_videos(16, size, path, torch.Generator().manual_seed(1), worst)
        edges = torch.cat([w[..., 0, :], w[..., -1, :], w[..., :, 0], w[..., :, -1]], dim=-1)
        assert torch.all(edges == -1)
    # a 32-frame path at a full training speed would not fit: 4x needs the slowing
    with pytest.raises(ValueError, match="does not fit"):
        dataclasses.replace(motion, path_frames=4 * frames).check(size, frames)


def test_v2_clips_are_windows_of_the_long_path():
    """Training clips start anywhere along the longer path, so clip starts spread over the whole frame."""
    cfg, motion = _v2_motion()
    size, frames = cfg["sample"]["height"], cfg["sample"]["num_frames"]
    a, pa = sample_videos(8, size, frames, torch.Generator().manual_seed(2), motion)
    b, pb = sample_videos(8, size, frames, torch.Generator().manual_seed(2), motion)
    assert torch.equal(a, b) and pa == pb and a.shape == (8, 3, frames, size, size)
    short = dataclasses.replace(motion, path_frames=None)
    c, pc = sample_videos(8, size, frames, torch.Generator().manual_seed(2), short)
    assert pc == pa and not torch.equal(a, c)  # same draws, shifted along the path


def test_motion_spec_refuses_paths_that_leave_the_frame():
    with pytest.raises(ValueError, match=r"path_frames=64, extent=1.0\) does not fit a 32-pixel frame"):
        MotionSpec(speed=(0.0125, 0.02), path_frames=64).check(32, 8)
    with pytest.raises(ValueError, match=r"MotionSpec.speed=\(0.02, 0.01\)"):
        MotionSpec(speed=(0.02, 0.01))
    with pytest.raises(ValueError, match="unknown keys.*'sped'"):
        MotionSpec.from_config({"sped": [0.1, 0.2]})
    with pytest.raises(ValueError, match="path_frames=4 must be >= the clip length"):
        MotionSpec(path_frames=4).check(16, 8)


def test_direction_weights_choose_the_directions_drawn_and_are_checked():
    """``direction_weights`` draws each direction in proportion to its weight (zero: never); ``None`` keeps the
    uniform draws; a wrong length, a negative weight or a zero sum is refused naming the field."""
    size, frames = 20, 8
    motion = MotionSpec(radius=(0.085, 0.105), speed=(0.05, 0.055), path_frames=12, extent=1.15)
    vertical = dataclasses.replace(motion, direction_weights=(0.0, 0.0, 1.0, 1.0))
    _, prompts = sample_videos(64, size, frames, torch.Generator().manual_seed(0), vertical)
    assert {p.split()[-1] for p in prompts} == {"down", "up"}
    _, uniform = sample_videos(64, size, frames, torch.Generator().manual_seed(0), motion)
    assert {p.split()[-1] for p in uniform} == {"right", "left", "down", "up"}
    _, same = sample_videos(64, size, frames, torch.Generator().manual_seed(0),
                            dataclasses.replace(motion, direction_weights=None))
    assert same == uniform
    assert MotionSpec.from_config({"direction_weights": [1, 1, 2, 2]}).direction_weights == (1, 1, 2, 2)
    for bad in ((1.0, 1.0, 1.0), (1.0, -1.0, 1.0, 1.0), (0.0, 0.0, 0.0, 0.0)):
        with pytest.raises(ValueError, match=r"MotionSpec.direction_weights=.*non-negative weights"):
            MotionSpec(direction_weights=bad)
