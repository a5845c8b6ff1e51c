"""Fixtures of the web UI tests: :mod:`attnplug.ui` launched once on a free localhost port."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
APP_PATH = Path(__file__).resolve().parents[2] / "demos" / "app.py"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
def app_module():
    pytest.importorskip("gradio")
    import attnplug.ui

    return attnplug.ui


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(app_module):
    """``(demo, url)``: the app serving on 127.0.0.1 in this process (Gradio's own server thread)."""
    demo = app_module.build_app()
    _, url, _ = app_module.serve(demo, "127.0.0.1", free_port(), prevent_thread_lock=True, quiet=True)
    yield demo, url
    demo.close()


def load_demo_module(name: str):
    """``demos/<name>.py`` imported as ``attnplug_demo_<name>`` (once)."""
    key = f"attnplug_demo_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, APP_PATH.parent / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def screenshot_module():
    return load_demo_module("screenshot")
