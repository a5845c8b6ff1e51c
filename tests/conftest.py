import logging
import os

import pytest
import torch

# TRITON_INTERPRET is read when a @triton.jit function is decorated, i.e. when attnplug's kernel modules are first
# imported (by any test module at collection time), so it is set here, before anything imports attnplug.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def caplog_attnplug(caplog):
    caplog.set_level(logging.DEBUG, logger="attnplug")
    return caplog
