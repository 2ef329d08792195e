"""Loading a local model prints one line, no progress bars and no library warnings;
under --quiet not even that."""

from __future__ import annotations

import selectors
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli, start_cli
from tests.helpers import CALC_EXAMPLE, committed_copy

NOISE = ("Loading weights", "Failed to load", "it/s]", "Warning", "W1", "deprecated")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lines_until(process: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """stdout's lines up to the first holding `marker`, read with a deadline."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not any(marker in line for line in lines):
            left = deadline - time.monotonic()
            assert left > 0 and process.poll() is None, (lines, process.poll())
            if selector.select(left):
                lines.append(process.stdout.readline())
    return lines


def test_serve_says_it_loads_in_one_line_and_nothing_else(tiny_cwm_dir: Path) -> None:
    process = start_cli(
        "serve", "--model", str(tiny_cwm_dir), "--offline", "--port", str(free_port())
    )
    try:
        shown = lines_until(process, "serving", timeout=120)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert [line.split()[0] for line in shown] == ["loading", "serving"], shown
    assert err == "", err


@pytest.mark.docker
def test_trace_says_it_loads_in_one_line_on_stderr(
    tiny_cwm_dir: Path, tmp_path: Path, base_image: str
) -> None:
    program = tmp_path / "f.py"
    program.write_text("def f(a):\n    return a + 1\n")
    args = ["trace", str(program), "--function", "f", "--args", "1", "--image", base_image]
    tiny = ["--model", str(tiny_cwm_dir), "--offline", "--max-frame-tokens", "4"]
    done = run_cli(*args, *tiny, "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [f"loading {tiny_cwm_dir} …"], done.stderr
    assert done.stdout.startswith("{")


@pytest.mark.docker
def test_fix_quiet_prints_only_the_outcome(
    tiny_cwm_dir: Path, base_image: str, tmp_path: Path
) -> None:
    repo = committed_copy(CALC_EXAMPLE / "repo", tmp_path / "calc")
    done = run_cli(
        "fix", "--repo", str(repo), "--issue", "median is wrong", "--image", base_image,
        "--model", str(tiny_cwm_dir), "--offline", "--max-turns", "1", "--max-reply-tokens", "4",
        "--output", str(tmp_path / "out"), "--quiet",
    )  # fmt: skip
    assert not any(noise in done.stderr for noise in NOISE), done.stderr
    assert not any(noise in done.stdout for noise in NOISE), done.stdout
    assert "loading" not in done.stdout + done.stderr
