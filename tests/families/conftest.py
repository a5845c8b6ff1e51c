"""The family tests build tiny models of every class, whose construction and refusals log warnings by design."""

import logging

import pytest


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)
