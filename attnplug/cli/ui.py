"""``attnplug ui``: start the Gradio app, passing the options it does not know on to it."""

from __future__ import annotations

import importlib.util
import runpy
import sys
from pathlib import Path

from .errors import UserError

UI_MODULE = "attnplug.ui"  # the app inside the package, once it lives there


def find_ui_app() -> Path | None:
    """The launcher ``demos/app.py`` of the source checkout this package runs from, if there is one; used only
    while the app is not a module of the package (:data:`UI_MODULE`)."""
    app = Path(__file__).resolve().parents[2] / "demos" / "app.py"
    return app if app.is_file() else None


def cmd_ui(args, rest: list[str]) -> int:
    """Run the app's ``__main__`` with ``--host/--port/--share`` and the pass-through options (``--device``...)."""
    argv = ["--host", args.host, "--port", str(args.port)] + (["--share"] if args.share else [])
    for flag in ("device", "dtype"):
        if getattr(args, flag, None):
            argv += [f"--{flag}", getattr(args, flag)]
    argv += rest
    in_package = importlib.util.find_spec(UI_MODULE) is not None
    app = None if in_package else find_ui_app()
    if not in_package and app is None:
        raise UserError("the Gradio app demos/app.py is not part of this install; run `attnplug ui` from a source "
                        "checkout (pip install -e '.[demo]').")
    old = sys.argv
    sys.argv = [UI_MODULE if in_package else str(app), *argv]
    try:
        if in_package:
            runpy.run_module(UI_MODULE, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(app), run_name="__main__")
    finally:
        sys.argv = old
    return 0
