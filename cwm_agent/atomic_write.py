"""Writing a file whole: an interrupt or a crash leaves the old file or the new one.

Run folders are read while they are written (`--resume`, the viewer, a CI
artifact upload), so no reader may meet half a file. The text goes to
`NAME.tmp` beside the file, then replaces it in one rename; a write that
fails removes `NAME.tmp`. Text is UTF-8 whatever the locale, as every reader
of these files expects.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cwm_agent.errors import DiskFullError


def write_atomically(path: Path, data: str | bytes, *, durable: bool = False) -> None:
    """Replace `path` with `data`; `durable` also waits for the disk (an fsync).

    A failed write (a full disk above all) removes its temporary file and leaves
    `path` as it was; a full disk is raised as `DiskFullError`, naming `path`."""
    partial = path.with_name(path.name + ".tmp")
    try:
        with partial.open("wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        _raise_disk_full(path, exc)
        raise


def append_line(path: Path, line: str) -> None:
    """Add one line (its newline added here) to a log that readers take line by line:
    a failed append (a full disk) is cut off again, so no half line is left for the
    next append to run into."""
    data = line.encode("utf-8") + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.fstat(fd).st_size
        try:
            while data:  # unbuffered, so nothing is left to fail at close
                data = data[os.write(fd, data) :]
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            _raise_disk_full(path, exc)
            raise
    finally:
        os.close(fd)


def _raise_disk_full(path: Path, exc: BaseException) -> None:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        raise DiskFullError(path) from None


def write_json(path: Path, data: BaseModel | Mapping[str, Any], *, newline: bool = True) -> None:
    """`data` as JSON indented by 2, ending in a newline unless `newline` is False
    (`trajectory.json` has never had one).

    A pydantic model is written as its `model_dump_json` (text as is); a mapping
    as `json.dumps` (non-ASCII escaped, so `model.model_dump()` gives that form
    of a model). Each file keeps the form, and so the bytes, it has always had."""
    if isinstance(data, BaseModel):
        text = data.model_dump_json(indent=2)
    else:
        text = json.dumps(data, indent=2)
    write_atomically(path, text + "\n" if newline else text)
