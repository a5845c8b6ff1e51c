import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # cli_testutil

from cli_testutil import run_cli  # noqa: E402


@pytest.fixture
def cli():
    return run_cli
