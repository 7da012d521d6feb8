"""One error type for what a user caused (a bad config, file, checkpoint or data): the CLI
turns any `UserError` into one line and exit status 2. Everything else is a bug and keeps
its traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake in what the user gave; the message names it and the fix, on one line."""


class ConfigError(UserError, ValueError):
    """A bad key or value in a run or sweep config; the message is one line naming it."""


class CheckpointError(UserError, ValueError):
    """Weights that do not fit the model (an HF folder, a stage checkpoint, an export), or a file
    that is not a checkpoint: names the file, the key and the fix. Raised by the one strict
    loader, `hf_loading.load_strict`, and the readers around it."""


def one_line(exn: BaseException) -> str:
    """The error's message on one line. An error raised in a DataLoader worker arrives with the
    worker's traceback in its text; its last line holds the message itself."""
    lines = [line for line in str(exn).strip().splitlines() if line.strip()] or [type(exn).__name__]
    if len(lines) > 1 and any(line.startswith("Original Traceback") for line in lines):
        return lines[-1].split(": ", 1)[-1]
    return " ".join(line.strip() for line in lines)


def first_line(exn: BaseException) -> str:
    """The first line of a message that spans lines (OmegaConf's: full_key, object_type ...)."""
    return (str(exn).strip().splitlines() or [type(exn).__name__])[0]


def run_script(main: Callable[[], None], prog: str) -> None:
    """A `data_pipelines/` script's entry point: a user's mistake is one line, exit status 2."""
    try:
        main()
    except (UserError, FileNotFoundError, IsADirectoryError) as exn:
        print(f"{prog}: error: {one_line(exn)}", file=sys.stderr)
        sys.exit(2)
