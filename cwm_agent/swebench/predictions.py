"""`predictions.jsonl` in the official format, kept whole at every moment.

Each finished instance replaces the file through a temporary file and an
atomic rename, so a run killed at any moment leaves every line it had and no
half line; ids are unique by construction, which is what `--resume` relies on.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from pydantic import BaseModel, ValidationError

from cwm_agent.atomic_write import write_atomically
from cwm_agent.errors import first_line
from cwm_agent.swebench.errors import SwebenchError


class Prediction(BaseModel):
    """One line of the official predictions format."""

    instance_id: str
    model_name_or_path: str
    model_patch: str | None = None


def read_predictions(path: Path) -> dict[str, Prediction]:
    """Predictions by instance id from `.jsonl`, or `.json` (a list or an id-keyed object)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SwebenchError(f"predictions file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SwebenchError(f"cannot read predictions file {path}: {exc}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
            rows = list(data.values()) if isinstance(data, dict) else data
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        found = [Prediction.model_validate(row) for row in rows]
    except (json.JSONDecodeError, ValidationError, AttributeError, TypeError) as exc:
        raise SwebenchError(f"predictions file {path} is malformed: {first_line(exc)}") from None
    return {prediction.instance_id: prediction for prediction in found}


class PredictionsFile:
    """The run's predictions; `add` is safe from many threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done = read_predictions(path) if path.exists() else {}
        self._lock = threading.Lock()

    def add(self, prediction: Prediction) -> None:
        with self._lock:
            self.done[prediction.instance_id] = prediction
            lines = "".join(p.model_dump_json() + "\n" for p in self.done.values())
            write_atomically(self.path, lines, durable=True)
