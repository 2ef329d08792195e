"""The root of the errors a user can cause, and the one line an exception is shown as."""

from __future__ import annotations

import os
from pathlib import Path

from docker.errors import APIError
from pydantic import ValidationError


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


def read_text(path: Path, flag: str, error: type[UserError]) -> str:
    """The UTF-8 text of a file a flag names, or `error` saying in one line why not."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{flag} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise error(f"{flag} {path} is not UTF-8 text") from None


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


def unreadable(path: Path, exc: Exception) -> str:
    """Why the JSON record at `path` does not read, as one line that names the file.

    `exc` comes from a pydantic model's `model_validate_json`, `pydantic_core.from_json`
    (a ValueError) or the read itself (an OSError). A file that stops part-way is told
    apart: it is what a run killed while writing leaves behind."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        if first["type"] != "json_invalid":
            where = ".".join(str(part) for part in first["loc"]) or "the record"
            return f"{path} is not a valid {exc.title} record: {where}: {first['msg']}"
        syntax = first["msg"].removeprefix("Invalid JSON: ")
    elif isinstance(exc, ValueError) and not isinstance(exc, UnicodeDecodeError):
        syntax = str(exc)
    else:
        return f"{path} is unreadable: {first_line(exc)}"
    if syntax.startswith("EOF while parsing"):
        return f"{path} is incomplete: its JSON stops part-way ({syntax}); was its run cut off?"
    return f"{path} is not valid JSON: {syntax}"
