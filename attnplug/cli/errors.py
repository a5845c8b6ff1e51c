"""The one exception the command line turns into a one-line error."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user typed: printed as one line, exit code 2, no stack trace."""
