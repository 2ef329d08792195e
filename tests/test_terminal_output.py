"""Output off a terminal (a pipe, a CI log) is not wrapped or cut at 80 columns."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli

LONG_REPO = "an-organisation-with-a-long-name/a-repository-whose-name-is-long-as-well"


def test_a_piped_table_keeps_whole_cells(tmp_path: Path) -> None:
    folder = tmp_path / "trajectories" / "acme__app-1"
    folder.mkdir(parents=True)
    result = {
        "instance_id": "acme__app-1",
        "repo": LONG_REPO,
        "difficulty": "1-4 hours of work, as the annotators judged it",
        "image": "acme/app:1",
        "status": "submitted",
    }
    (folder / "result.json").write_text(json.dumps(result))
    done = run_cli("swebench", "report", str(tmp_path), env={"COLUMNS": ""})  # stdout: a pipe
    assert done.returncode == 0, done.stderr
    assert any(LONG_REPO in line for line in done.stdout.splitlines()), done.stdout
    assert "1-4 hours of work, as the annotators judged it" in done.stdout
    assert max(map(len, done.stdout.splitlines())) > 80
