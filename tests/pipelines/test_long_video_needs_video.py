"""``long_video`` on an image pipeline says it needs a video pipeline (not a fix that then crashes)."""

import pytest

from attnplug.models import load_pipeline
from attnplug.pipelines import LongVideoConfig, long_video


@pytest.mark.parametrize("config", [None, LongVideoConfig(train_frames=8)])
def test_long_video_on_an_image_pipeline_names_the_problem(config):
    pipe = load_pipeline("shapes-unet")
    with pytest.raises(ValueError, match="long_video needs a video pipeline; .* makes images"):
        long_video(pipe, "red circle", num_frames=32, config=config)
