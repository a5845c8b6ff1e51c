"""The attnplug web UI (Gradio): pick a model and an attention method, generate an image or a video, compare with
dense. Built on attnplug's public API and :mod:`attnplug.report`'s helpers only.

``attnplug ui`` (or ``python -m attnplug.ui``) starts it; :func:`build_app` returns the ``gr.Blocks`` and
:func:`serve` launches it. Modules: ``forms`` (inputs from config metadata), ``requests`` (the app's own checks),
``models`` (the model cache), ``running`` (one pipeline run), ``generation`` (files and summary), ``app`` (the page).
"""

from __future__ import annotations

import argparse
import logging

from .forms import api_args, available_pipelines, default_inputs, form_field, input_keys, method_forms
from .generation import Result, generate
from .models import ModelCache
from .requests import Request, parse_request

__all__ = ["ModelCache", "Request", "Result", "api_args", "available_pipelines", "build_app", "default_inputs",
           "form_field", "generate", "input_keys", "main", "method_forms", "parse_request", "serve"]


def build_app(cache: ModelCache | None = None):
    """The Gradio app (imports Gradio)."""
    from .app import build_app as build

    return build(cache)


def serve(demo, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, **kwargs):
    """Launch ``demo``; returns Gradio's ``(app, local_url, share_url)``."""
    from .app import serve as launch

    return launch(demo, host, port, share, **kwargs)


class _Quiet(logging.Filter):
    """Drops the HTTP client's request lines from the server log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(("httpx", "httpcore"))


def main(argv: list[str] | None = None) -> None:
    """Parse ``--host --port --share --device --dtype`` and serve the app."""
    parser = argparse.ArgumentParser(prog="attnplug ui", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Quiet())
    import torch

    demo = build_app(ModelCache(args.device, getattr(torch, args.dtype)))
    serve(demo, args.host, args.port, args.share)
