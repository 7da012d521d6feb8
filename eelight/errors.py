"""One error type for what a user caused (a bad config, file, checkpoint or data): the CLI
turns any `UserError` into one line and exit status 2. Everything else is a bug and keeps
its traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave; the message names it and the fix, on one line."""
