"""A task's start state: a recipe (`Workspace`) that opens a fresh sandbox
holding it (`StartSandbox`), in which to run commands and apply or check patches.

Test-time scaling gives every rollout and every test run its own container
from the same start state; `fix` (a snapshot of the user's repository copied
in) and SWE-bench (the repository already inside an instance image) differ
only in how that state is made, so both are a `Workspace`.
"""

from __future__ import annotations

import io
import posixpath
import shlex
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO

import docker

from cwm_agent.sandbox import WORKDIR, Sandbox, SandboxConfig, SandboxError
from cwm_agent.sandbox.config import DEFAULT_SESSION_TIMEOUT_S

_INIT_REPO = """set -e
git init -q
git add -A -f
git -c user.name=cwm-agent -c user.email=cwm-agent@localhost commit -q --no-verify \\
  --allow-empty -m "cwm-agent: start"
"""
# A scratch index: the check leaves the agent's work in the tree and index alone.
_CHECK_PATCH = """set -e
export GIT_INDEX_FILE="$(mktemp -u)"
git -c safe.directory='*' read-tree "$1"
git -c safe.directory='*' apply --cached --check "$2"
"""
_COMMIT_PATCH = """set -e
git -c safe.directory='*' apply --whitespace=nowarn "$1"
git -c safe.directory='*' add -A -f
git -c safe.directory='*' -c user.name=cwm-agent -c user.email=cwm-agent@localhost \\
  commit -q --no-verify --allow-empty -m candidate
"""
# What a patch makes of the files it touches, read from a scratch index: for
# each file still there, its path, its size and its bytes (NUL-separated).
_PATCHED_FILES = """set -e
head=$1 patch=${!#}
set -- "${@:2:$#-2}"
export GIT_INDEX_FILE="$(mktemp -u)"
trap 'rm -f "$GIT_INDEX_FILE"' EXIT
git -c safe.directory='*' read-tree "$head"
git -c safe.directory='*' apply --cached "$patch"
tree=$(git -c safe.directory='*' write-tree)
[ $# -gt 0 ] || exit 0
git -c safe.directory='*' ls-tree -r -z "$tree" -- "$@" | while IFS= read -r -d '' entry; do
  read -r _ type id <<<"${entry%%$'\\t'*}"
  [ "$type" = blob ] || continue
  printf '%s\\0%s\\0' "${entry#*$'\\t'}" "$(git -c safe.directory='*' cat-file -s "$id")"
  git -c safe.directory='*' cat-file blob "$id"
done
"""
# Images with only `python3` (plain Debian) still run `python test_issue.py`.
_PYTHON_SHIM = 'command -v python >/dev/null || python() { python3 "$@"; }'
RESET_TREE = "git -c safe.directory='*' reset -q --hard && git -c safe.directory='*' clean -fdq"
OUTPUT_LIMIT = 4 * 1024 * 1024  # bytes of a test run's log that are kept


class WorkspaceError(SandboxError):
    """The start state cannot be made in the image; the message is meant for users."""


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


@dataclass(frozen=True)
class StartSandbox:
    """A sandbox holding the start state at `head`, its commit inside the sandbox.

    A patch is committed on top (`apply`), so after each `run` the tree goes
    back to exactly that state (`git reset --hard` and `git clean`) and one
    test's leftovers cannot change the next one's outcome. A run's output goes
    to a file, not through the shell session, so a chatty test suite is never
    cut at the session's output cap."""

    box: Sandbox
    head: str

    @property
    def workdir(self) -> str:
        return self.box.config.workdir

    def check(self, patch: bytes) -> str | None:
        """Why `patch` does not apply to the start commit, or None; whatever a
        rollout left in the tree, nothing in it changes."""
        code, out, err = self._with_patch(_CHECK_PATCH, patch, self.head)
        return None if code == 0 else (err or out).decode("utf-8", "replace").strip()

    def patched(self, patch: bytes, paths: list[str]) -> dict[str, bytes | None] | str:
        """The files at `paths` as `patch` leaves the start commit (None: absent),
        or why it does not apply; one exec, and nothing in the tree changes."""
        code, out, err = self._with_patch(_PATCHED_FILES, patch, self.head, *paths)
        if code != 0:
            return (err or out).decode("utf-8", "replace").strip() or f"git apply exited {code}"
        found: dict[str, bytes | None] = dict.fromkeys(paths)
        at = 0
        while at < len(out):
            name_end = out.index(b"\0", at)
            size_end = out.index(b"\0", name_end + 1)
            start = size_end + 1
            end = start + int(out[name_end + 1 : size_end])
            found[out[at:name_end].decode("utf-8", "surrogateescape")] = out[start:end]
            at = end
        return found

    def apply(self, patch: bytes) -> str | None:
        """Commit `patch` on the start state; the error when it does not apply."""
        code, out, err = self._with_patch(_COMMIT_PATCH, patch)
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
        self.box.exec(["bash", "-c", f"{RESET_TREE}; rm -f {log}"])
        return CommandRun(command, code, output, round(duration, 3))

    def _with_patch(self, script: str, patch: bytes, *args: str) -> tuple[int, bytes, bytes]:
        """Run `script` with `args`, then the path of a file holding `patch`."""
        path = f"/tmp/cwm-agent-{uuid.uuid4().hex[:8]}.diff"
        self.box.write_file(path, patch, mode=0o644)
        return self.box.exec(["bash", "-c", script, "bash", *args, path])


@dataclass(frozen=True)
class Workspace:
    """How to make the start state; `open()` may be called any number of times."""

    image: str
    workdir: str = WORKDIR
    snapshot: bytes | None = None  # tar of the start tree; None: the image holds the repository
    prepare: str | None = None  # bash run once in each new container before anything else
    startup: tuple[str, ...] = ()  # run at every shell (re)start, e.g. activating an environment
    session_timeout: float = DEFAULT_SESSION_TIMEOUT_S
    labels: dict[str, str] = field(default_factory=dict)

    def config(self, labels: dict[str, str] | None = None) -> SandboxConfig:
        return SandboxConfig(
            image=self.image,
            workdir=self.workdir,
            startup=list(self.startup),
            session_timeout=self.session_timeout,
            labels={**self.labels, **(labels or {})},
        )

    @contextmanager
    def open(
        self, client: docker.DockerClient, labels: dict[str, str] | None = None
    ) -> Iterator[StartSandbox]:
        """A started sandbox with the start state at `workdir` as a git repository's HEAD."""
        with Sandbox(self.config(labels), client) as box:
            if self.snapshot is not None:
                with _under(self.snapshot, self.workdir) as tar:
                    box.copy_in(tar, "/")
                self._run(box, _INIT_REPO, "the sandbox image needs git")
            if self.prepare is not None:
                self._run(box, self.prepare, "preparing the repository failed")
            code, out, _ = box.exec(["git", "-c", "safe.directory=*", "rev-parse", "HEAD"])
            if code != 0:
                raise WorkspaceError(f"{self.workdir} in {self.image!r} is not a git repository")
            yield StartSandbox(box, out.decode().strip())

    def _run(self, box: Sandbox, script: str, hint: str) -> None:
        code, out, err = box.exec(["bash", "-c", script], workdir=self.workdir)
        if code != 0:
            detail = (err or out).decode("utf-8", "replace").strip()[-200:]
            raise WorkspaceError(f"cannot set up {self.image!r}: {hint} ({detail})")


def _under(snapshot: bytes, folder: str) -> IO[bytes]:
    """The snapshot with every entry moved under `folder`, to unpack at `/`.

    Docker refuses a relative symlink that leads out of the folder it unpacks
    into, and links above a repository's root are common in monorepos; unpacked
    at `/`, such a link is kept exactly and points where it would from `folder`.
    """
    moved = tempfile.TemporaryFile()  # noqa: SIM115 (the caller closes it)
    prefix = folder.strip("/")
    with (
        tarfile.open(fileobj=io.BytesIO(snapshot)) as source,
        tarfile.open(fileobj=moved, mode="w") as tar,
    ):
        for member in source:
            data = source.extractfile(member) if member.isfile() else None
            member.name = posixpath.join(prefix, member.name)
            tar.addfile(member, data)
    moved.seek(0)
    return moved
