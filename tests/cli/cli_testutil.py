"""Helpers of the CLI tests: run ``python -m attnplug`` from this checkout in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def run_cli(*args, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    """``python -m attnplug ARGS`` in a subprocess, from this checkout."""
    return subprocess.run([sys.executable, "-m", "attnplug", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=cli_env(**env), cwd=ROOT)

