"""Fixtures shared by the pipeline tests."""

import pytest


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """A tiny random-weight Wan pipeline (``attnplug.testing.tiny_pipeline("wan")``), progress bars off; one per
    test module."""
    from attnplug.testing import tiny_pipeline

    pipe = tiny_pipeline("wan", str(tmp_path_factory.mktemp("wan")))
    pipe.set_progress_bar_config(disable=True)
    return pipe
