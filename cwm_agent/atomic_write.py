"""Writing a file whole: an interrupt or a crash leaves the old file or the new one.

Run folders are read while they are written (`--resume`, the viewer, a CI
artifact upload), so no reader may meet half a file. The text goes to
`NAME.tmp` beside the file, then replaces it in one rename. Text is UTF-8
whatever the locale, as every reader of these files expects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel


def write_atomically(path: Path, text: str, *, durable: bool = False) -> None:
    """Replace `path` with `text`; `durable` also waits for the disk (an fsync)."""
    partial = path.with_name(path.name + ".tmp")
    with partial.open("w", encoding="utf-8") as handle:
        handle.write(text)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(partial, path)


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
