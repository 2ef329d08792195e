"""The project's own tests on the patched tree, in a fresh sandbox.

A fresh container means nothing the agent left behind (build outputs, edited
files it did not submit, a doctored test runner) can make the tests pass.
"""

from __future__ import annotations

import git
from pydantic import BaseModel

from cwm_agent import gitrepo
from cwm_agent.sandbox import LABEL, docker_client
from cwm_agent.workspace import Workspace

TAIL_CHARS = 3000


class TestEvidence(BaseModel):
    """What the PR body shows reviewers about the test run."""

    command: str
    exit_code: int | None
    passed: bool
    duration_s: float
    output_tail: str


def run_tests(
    repo: git.Repo, commit: str, image: str, workdir: str, command: str, timeout: float
) -> TestEvidence:
    """Run `command` in `workdir` holding the files of `commit`; network off, no secrets."""
    workspace = Workspace(
        image=image,
        workdir=workdir,
        snapshot=gitrepo.commit_tar(repo, commit),
        session_timeout=timeout,
        labels={f"{LABEL}.job": "ci-test"},
    )
    with workspace.open(docker_client()) as start:
        run = start.run(command, timeout)
    output = run.output + (f"\n[timed out after {timeout:.0f}s]" if run.timed_out else "")
    return TestEvidence(
        command=command,
        exit_code=run.exit_code,
        passed=run.exit_code == 0,
        duration_s=run.duration_s,
        output_tail=output[-TAIL_CHARS:],
    )
