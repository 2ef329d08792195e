"""Running tests on a tree: the start state, or the start state plus a candidate patch.

The patch is committed inside the sandbox, so after each test the tree goes
back to exactly that state (`git reset --hard` and `git clean`), and one test's
leftovers cannot change the next one's outcome. Output goes to a file, not
through the shell session, so a chatty test suite is never cut at the
session's output cap.
"""

from __future__ import annotations

import shlex
import time
import uuid
from dataclasses import dataclass

from cwm_agent.workspace import Opened

_COMMIT_PATCH = """set -e
git -c safe.directory='*' apply --whitespace=nowarn "$1"
git -c safe.directory='*' add -A -f
git -c safe.directory='*' -c user.name=cwm-agent -c user.email=cwm-agent@localhost \\
  commit -q --no-verify --allow-empty -m candidate
"""
# Images with only `python3` (plain Debian) still run `python test_issue.py`.
_PYTHON_SHIM = 'command -v python >/dev/null || python() { python3 "$@"; }'
_RESET = "git -c safe.directory='*' reset -q --hard && git -c safe.directory='*' clean -fdq"
OUTPUT_LIMIT = 4 * 1024 * 1024  # bytes of a test run's log that are kept


@dataclass(frozen=True)
class CommandRun:
    """One command's outcome; `exit_code` is None when it ran out of time."""

    command: str
    exit_code: int | None
    output: str
    duration_s: float

    @property
    def timed_out(self) -> bool:
        return self.exit_code is None


class Tree:
    """A sandbox holding the start state, optionally with a patch committed on top."""

    def __init__(self, opened: Opened) -> None:
        self.box = opened.box
        self.head = opened.head
        self.workdir = opened.box.config.workdir

    def apply(self, patch: bytes) -> str | None:
        """Commit `patch` on the start state; the error when it does not apply."""
        path = f"/tmp/cwm-agent-{uuid.uuid4().hex[:8]}.diff"
        self.box.write_file(path, patch, mode=0o644)
        code, out, err = self.box.exec(["bash", "-c", _COMMIT_PATCH, "bash", path])
        if code == 0:
            return None
        return (err or out).decode("utf-8", "replace").strip() or f"git apply exited {code}"

    def run(
        self, command: str, timeout: float, files: dict[str, bytes] | None = None
    ) -> CommandRun:
        """Write `files` (paths relative to the repository), run `command` in the
        repository root, then put the tree back as it was."""
        assert self.box.session is not None
        for path, data in (files or {}).items():
            self.box.write_file(f"{self.workdir}/{path}", data, mode=0o644)
        log = f"/tmp/cwm-agent-{uuid.uuid4().hex[:8]}.log"
        started = time.monotonic()
        body = f"{_PYTHON_SHIM}\n{command}\n"
        wrapped = f"cd {shlex.quote(self.workdir)} && ( {body}) >{log} 2>&1 </dev/null"
        result = self.box.session.run(wrapped, timeout=timeout)
        duration = time.monotonic() - started
        code = None if result.failure is not None else result.exit_code
        found = self.box.read(log)
        output = found[1][-OUTPUT_LIMIT:].decode("utf-8", "replace") if found else ""
        self.box.exec(["bash", "-c", f"{_RESET}; rm -f {log}"])
        return CommandRun(command, code, output, round(duration, 3))
