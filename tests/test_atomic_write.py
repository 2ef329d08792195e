"""The one JSON writer keeps each file's bytes: a model as `model_dump_json`, a
mapping as `json.dumps` (non-ASCII escaped), and it leaves no partial file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import BaseModel

from cwm_agent.atomic_write import write_atomically, write_json
from cwm_agent.errors import DiskFullError
from cwm_agent.trace.cruxeval import append_jsonl


class Row(BaseModel):
    name: str
    took_s: float
    tags: list[str]


ROW = Row(name="café …", took_s=1.5, tags=[])


def test_a_model_is_written_as_its_json_text(tmp_path: Path) -> None:
    path = tmp_path / "row.json"
    write_json(path, ROW)
    assert path.read_bytes() == (
        '{\n  "name": "café …",\n  "took_s": 1.5,\n  "tags": []\n}\n'.encode()
    )
    assert path.read_bytes() == (ROW.model_dump_json(indent=2) + "\n").encode()


def test_a_mapping_is_written_with_non_ascii_escaped(tmp_path: Path) -> None:
    path = tmp_path / "row.json"
    write_json(path, ROW.model_dump())
    assert path.read_bytes() == (
        b'{\n  "name": "caf\\u00e9 \\u2026",\n  "took_s": 1.5,\n  "tags": []\n}\n'
    )


def test_without_the_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "trajectory.json"
    write_json(path, ROW, newline=False)
    assert path.read_bytes() == ROW.model_dump_json(indent=2).encode()


def test_the_file_is_replaced_whole_and_nothing_is_left_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    path.write_text("old and longer than the new text\n")
    before = path.stat().st_ino
    write_atomically(path, "new\n", durable=True)
    assert path.read_bytes() == b"new\n"
    assert path.stat().st_ino != before  # a new file renamed over it, not written in place
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.jsonl"]


def test_a_full_disk_names_the_file_and_leaves_the_old_one_alone(
    small_disk: Callable[[str], Path],
) -> None:
    """Issue 23.3: the temporary file goes too, so nothing half-written is left."""
    folder = small_disk("64k")
    path = folder / "result.json"
    path.write_text("old\n")
    with pytest.raises(DiskFullError) as raised:
        write_atomically(path, "x" * 200_000)
    assert str(raised.value).startswith(f"the disk is full: cannot write {path}: ")
    assert path.read_text() == "old\n"
    assert [p.name for p in folder.iterdir()] == ["result.json"]


def test_a_failed_append_leaves_only_whole_lines(small_disk: Callable[[str], Path]) -> None:
    """A log read line by line (cruxeval's) never keeps half a line to merge with the next."""
    path = small_disk("16k") / "actual.jsonl"
    line = json.dumps({"id": 0, "trace": "x" * 1000})
    with pytest.raises(DiskFullError):
        for _ in range(100):
            append_jsonl(path, json.loads(line))
    text = path.read_text()
    assert text.endswith("\n") and all(json.loads(row) for row in text.splitlines())
