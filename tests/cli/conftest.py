import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # cli_testutil

from cli_testutil import run_cli  # noqa: E402


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as the subprocesses use: on a shared 2-core machine more threads only slow tiny models."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
