import logging

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def caplog_attnplug(caplog):
    caplog.set_level(logging.DEBUG, logger="attnplug")
    return caplog
