"""The project's own tests on the patched tree, in a fresh sandbox.

A fresh container means nothing the agent left behind (build outputs, edited
files it did not submit, a doctored test runner) can make the tests pass.
"""

from __future__ import annotations

import io

import git
from pydantic import BaseModel

from cwm_agent import gitrepo
from cwm_agent.sandbox import LABEL, Sandbox, SandboxConfig, docker_client

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
    config = SandboxConfig(
        image=image, workdir=workdir, session_timeout=timeout, labels={f"{LABEL}.job": "ci-test"}
    )
    with Sandbox(config, docker_client()) as box:
        box.copy_in(io.BytesIO(gitrepo.commit_tar(repo, commit)), workdir)
        assert box.session is not None
        result = box.session.run(command)
    output = result.output if result.failure is None else f"{result.output}\n[{result.failure}]"
    return TestEvidence(
        command=command,
        exit_code=result.exit_code,
        passed=result.exit_code == 0 and result.failure is None,
        duration_s=round(result.duration_s, 3),
        output_tail=output[-TAIL_CHARS:],
    )
