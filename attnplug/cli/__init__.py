"""Command line: ``attnplug generate | bench | report | methods | demo | ui``.

Method options come from the config dataclasses' field metadata (``-o field=value``), so every method's settings
are reachable without CLI code per method. Everything the user typed is checked before a model loads, and nothing
is imported that the command does not need: ``--help``, ``--version``, ``methods`` and the checks run without torch.
Data parallel: ``torchrun --nproc_per_node N -m attnplug generate ...`` (CPU or GPU) or
``accelerate launch --num_processes N -m attnplug generate ...`` (GPU) split prompts x seeds across processes.

Modules: ``parser`` (arguments), ``options`` (method options, schedule, seeds), ``items`` (prompts x seeds),
``checks`` (before loading), ``runner`` (loading and calling), ``records`` (records, names, resuming), and one module
per command.
"""

from __future__ import annotations

from .errors import UserError
from .main import main
from .options import (
    build_config,
    build_schedule,
    coerce_options,
    parse_methods,
    parse_option,
    parse_seeds,
)
from .parser import build_parser

__all__ = ["UserError", "build_config", "build_parser", "build_schedule", "coerce_options", "main",
           "parse_methods", "parse_option", "parse_seeds"]
