"""The root of the errors a user can cause, and the one line an exception is shown as."""

from __future__ import annotations

import os

from docker.errors import APIError


class UserError(Exception):
    """Something the user can fix (input, environment, a model that does not load): the CLI
    prints `error: MESSAGE` and exits 1, never a traceback; the message is meant for users."""


class DiskFullError(UserError):
    """A file could not be written because its disk is full (ENOSPC)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        where = f"cannot write {path}" if path else "a file could not be written"
        super().__init__(
            f"the disk is full: {where}: free some space, or write to another disk "
            "(e.g. another --output)"
        )


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of the exception's message, or its type when it has none.

    Docker's errors put the daemon's explanation (the cause) after a long URL,
    so that is what is shown; a line over `limit` loses its middle, never its end.
    """
    text = exc.explanation if isinstance(exc, APIError) and exc.explanation else str(exc)
    lines = str(text).strip().splitlines()
    if not lines:
        return type(exc).__name__
    line = lines[0]
    if len(line) <= limit:
        return line
    keep = limit - 3
    return f"{line[: keep // 3]} … {line[-(keep - keep // 3) :]}"
