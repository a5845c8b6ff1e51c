"""``attnplug ui``: start the Gradio app (:mod:`attnplug.ui`), passing the options it does not know on to it."""

from __future__ import annotations

import importlib.util
import runpy
import sys

from .errors import UserError

UI_MODULE = "attnplug.ui"


def cmd_ui(args, rest: list[str]) -> int:
    """Run the app's ``__main__`` with ``--host/--port/--share`` and the pass-through options (``--device``...)."""
    argv = ["--host", args.host, "--port", str(args.port)] + (["--share"] if args.share else [])
    for flag in ("device", "dtype"):
        if getattr(args, flag, None):
            argv += [f"--{flag}", getattr(args, flag)]
    argv += rest
    if importlib.util.find_spec("gradio") is None:
        raise UserError("the web UI needs Gradio, which is not installed: pip install 'attnplug[demo]'.")
    old = sys.argv
    sys.argv = [UI_MODULE, *argv]
    try:
        runpy.run_module(UI_MODULE, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = old
    return 0
