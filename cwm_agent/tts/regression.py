"""Regression tests chosen from the repository itself.

Outside a benchmark nobody says which tests matter, so the repository's own
test command is used: `--test-cmd`, or one detected in the tree (tox's
commands, else pytest when the sandbox has it, else unittest discovery). Its
output is split into per-test outcomes where the runner's format is known
(pytest `-rA`, unittest `-v`); otherwise the whole command is one test. Only
tests that pass on the original code count. When the suite outruns
`--regression-timeout`, it is narrowed to the test files that mention the
modules the candidates change.
"""

from __future__ import annotations

import configparser
import re
import shlex
from collections.abc import Iterable
from pathlib import PurePosixPath

from pydantic import BaseModel

from cwm_agent.tts.execution import CommandRun, Tree

PYTEST = "python -m pytest -rA -p no:cacheprovider"
UNITTEST = "python -m unittest -v"
_PYTEST_LINE = re.compile(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS|SKIPPED) (\S+)", re.MULTILINE)
_UNITTEST_LINE = re.compile(
    r"^(\w+) \(([\w.]+)\)(?:\n[^\n]*)?? \.\.\. "
    r"(ok|FAIL|ERROR|skipped|expected failure|unexpected success)",
    re.MULTILINE,
)
_TEST_FILES = r"(^|/)(test_[^/]*|[^/]*_test)\.py$"


class RegressionPlan(BaseModel):
    """The command, how it was chosen, and the tests that pass on the original code."""

    command: str | None
    runner: str  # "pytest", "unittest" or "command" (one outcome for the whole command)
    why: str
    narrowed_to: list[str] = []
    tests: list[str] = []
    original_exit_code: int | None = None
    original_duration_s: float = 0.0


def detect(tree: Tree, test_cmd: str | None) -> tuple[str | None, str, str]:
    """(command, runner, why) for this repository."""
    if test_cmd:
        return test_cmd, _runner_of(test_cmd), "given with --test-cmd"
    listing = _shell(tree, "git ls-files")
    files = listing.splitlines()
    tox = _tox_command(tree) if "tox.ini" in files else None
    if tox is not None:
        return tox, _runner_of(tox), "tox.ini's [testenv] commands, run without tox"
    tests = [f for f in files if re.search(_TEST_FILES, f)]
    if not tests:
        return None, "none", "no test files (test_*.py, *_test.py) in the repository"
    if _shell(tree, "python -c 'import pytest' >/dev/null 2>&1 && echo yes").strip() == "yes":
        return PYTEST, "pytest", f"{len(tests)} test files, pytest installed"
    top = sorted({PurePosixPath(f).parts[0] for f in tests if len(PurePosixPath(f).parts) > 1})
    start = next((d for d in ("tests", "test") if d in top), ".")
    command = f"python -m unittest discover -v -s {start}"
    return command, "unittest", f"{len(tests)} test files, no pytest"


def outcomes(runner: str, run: CommandRun) -> dict[str, bool]:
    """Test id -> passed, as far as the runner's output tells."""
    if runner == "pytest":
        found = {
            name: status in ("PASSED", "XFAIL") for status, name in _PYTEST_LINE.findall(run.output)
        }
    elif runner == "unittest":
        found = {
            f"{where}.{name}" if not where.endswith(name) else where: status
            in ("ok", "expected failure")
            for name, where, status in _UNITTEST_LINE.findall(run.output)
        }
    else:
        found = {}
    return found or {run.command: run.exit_code == 0}


def narrowed_command(
    tree: Tree, runner: str, command: str, patches: Iterable[bytes]
) -> tuple[str, list[str]] | None:
    """The command limited to the test files that mention a changed module, if any."""
    if runner not in ("pytest", "unittest"):
        return None
    stems = sorted(
        {
            PurePosixPath(path).stem
            for patch in patches
            for path in changed_files(patch)
            if path.endswith(".py") and not re.search(_TEST_FILES, path)
        }
    )
    if not stems:
        return None
    mentions = r"\b(" + "|".join(re.escape(stem) for stem in stems) + r")\b"
    found = _shell(
        tree,
        f"git ls-files | grep -E {shlex.quote(_TEST_FILES)} | "
        f"xargs -r grep -l -E {shlex.quote(mentions)} --",
    ).split()
    if not found:
        return None
    base = UNITTEST if runner == "unittest" else command
    return f"{base} {' '.join(shlex.quote(f) for f in found)}", found


def changed_files(patch: bytes) -> list[str]:
    """Paths a git patch touches (the new path of a rename)."""
    text = patch.decode("utf-8", "surrogateescape")
    return re.findall(r"^diff --git a/\S+ b/(\S+)$", text, re.MULTILINE)


def _runner_of(command: str) -> str:
    if "pytest" in command:
        return "pytest"
    if "unittest" in command:
        return "unittest"
    return "command"


def _tox_command(tree: Tree) -> str | None:
    """The first of tox's `[testenv] commands`, which are usually the test run itself."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(tree.box.read_file(f"{tree.workdir}/tox.ini").decode("utf-8", "replace"))
    except (configparser.Error, OSError):
        return None
    commands = parser.get("testenv", "commands", fallback="").strip().splitlines()
    if not commands:
        return None
    command = commands[0].replace("{posargs}", "").strip()
    if command.startswith("pytest") or command.startswith("py.test"):
        return f"{PYTEST} {command.split(maxsplit=1)[1] if ' ' in command else ''}".strip()
    return command or None


def _shell(tree: Tree, script: str) -> str:
    _, out, _ = tree.box.exec(["bash", "-c", script])
    return out.decode("utf-8", "replace")
