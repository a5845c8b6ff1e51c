"""The entry point: parse, set up logging, run the command, and turn user errors into one line with exit code 2."""

from __future__ import annotations

import importlib
import logging
import os
import sys

from .errors import UserError
from .options import did_you_mean
from .parser import COMMANDS, build_parser


class _Formatter(logging.Formatter):
    """``name: message``, without repeating an ``attnplug:`` the message already starts with."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace(f"{record.name}: attnplug: ", f"{record.name}: ", 1)


def setup_logging(verbose: int) -> None:
    """attnplug's loggers to stderr at WARNING (``-v`` INFO, ``-vv`` DEBUG); libraries quiet unless ``-v``."""
    level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING
    root = logging.getLogger("attnplug")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        if "diffusers" in sys.modules:  # already imported: its logger read the variable before
            from diffusers.utils import logging as dlogging

            dlogging.set_verbosity_error()


def _command_word(argv: list[str]) -> str | None:
    """The first word that is not an option (where argparse expects the command)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``attnplug`` command; returns the exit code (2 for a user error, 1 for a failure)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    word = _command_word(argv)
    if word is None and not {"-h", "--help", "--version"} & set(argv):
        parser.print_help()
        return 0
    if word is not None and word not in COMMANDS:
        print(f"attnplug: error: unknown command {word!r}; choose one of {', '.join(COMMANDS)}."
              f"{did_you_mean(word, COMMANDS)}", file=sys.stderr)
        return 2
    rest: list[str] = []
    if word == "ui":
        args, rest = parser.parse_known_args(argv)
    else:
        args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", 0) or 0)
    if getattr(args, "prompt_opt", None):
        args.prompt = list(args.prompt) + args.prompt_opt
    module, name = COMMANDS[args.command]
    func = getattr(importlib.import_module(f".{module}", __package__), name)
    try:
        return func(args, rest) if args.command == "ui" else func(args)
    except UserError as exc:
        print(f"attnplug {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"attnplug {args.command}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    except (ValueError, TypeError) as exc:
        if getattr(args, "verbose", 0):
            raise
        print(f"attnplug {args.command}: error: {exc}", file=sys.stderr)
        return 2
