"""A task's start state, as a recipe that opens a fresh sandbox holding it.

Test-time scaling gives every rollout and every test run its own container
from the same start state; `fix` (a snapshot of the user's repository copied
in) and SWE-bench (the repository already inside an instance image) differ
only in how that state is made, so both are a `Workspace`.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import tempfile
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


class WorkspaceError(SandboxError):
    """The start state cannot be made in the image; the message is meant for users."""


@dataclass(frozen=True)
class Opened:
    """A sandbox holding the start state, and the commit that state is inside it."""

    box: Sandbox
    head: str


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
    ) -> Iterator[Opened]:
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
            yield Opened(box, out.decode().strip())

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
