"""The four tools CWM acts through: bash, edit, create, submit.

`Toolbox.run(name, argument)` executes one parsed tool call in a sandbox and
returns the feedback text of docs/protocol.md §6 (without the budget wrapper,
which belongs to the agent loop).
"""

from __future__ import annotations

import dataclasses
import time

from docker.errors import DockerException

from cwm_agent.errors import first_line
from cwm_agent.sandbox import Sandbox, SandboxError
from cwm_agent.sandbox.errors import DiskLimitExceeded, SandboxClosed
from cwm_agent.tools.bash import run_bash
from cwm_agent.tools.create import run_create
from cwm_agent.tools.edit import run_edit
from cwm_agent.tools.files import ToolFiles
from cwm_agent.tools.result import ToolResult
from cwm_agent.tools.submit import SubmitKind, run_submit

TOOL_NAMES = ("bash", "edit", "create", "submit")


class Toolbox:
    """The tools bound to one running sandbox."""

    def __init__(self, sandbox: Sandbox, submit_kind: SubmitKind = "patch") -> None:
        if sandbox.session is None:
            raise ValueError("the sandbox is not started")
        self.sandbox = sandbox
        self.session = sandbox.session
        self.files = ToolFiles(sandbox, sandbox.session)
        self.submit_kind: SubmitKind = submit_kind

    def run(self, name: str, argument: str) -> ToolResult:
        """One call; raises `DiskLimitExceeded` once the sandbox has stopped itself, and
        `SandboxClosed` once it was closed from under the rollout."""
        self._check_stopped()
        try:
            result = self._run(name, argument)
        except (SandboxError, DockerException):
            self._check_stopped()
            raise
        self._check_stopped()
        return result

    def _check_stopped(self) -> None:
        if self.sandbox.failure is not None:
            raise DiskLimitExceeded(self.sandbox.failure)
        if self.sandbox.closed:  # a bash session would otherwise restart and go on
            raise SandboxClosed("the sandbox was closed while the tool ran")

    def _run(self, name: str, argument: str) -> ToolResult:
        if name == "bash":
            return run_bash(self.session, argument)
        started = time.monotonic()
        try:
            if name == "edit":
                result = run_edit(self.files, argument)
            elif name == "create":
                result = run_create(self.files, argument)
            elif name == "submit":
                result = run_submit(self.files, argument, self.submit_kind)
            else:
                raise ValueError(f"unknown tool {name!r}; the parser rejects it before this")
        except (SandboxError, DockerException) as exc:
            # A path Docker refuses (a file used as a folder, /proc, ...) is the
            # model's mistake to see, as CWM saw its tool scripts fail.
            result = ToolResult(f"The {name} tool failed: {first_line(exc)}", ok=False)
        if name in ("edit", "create"):
            # CWM's edit/create ran as scripts that print() their message, so the
            # model saw it followed by a newline.
            result = dataclasses.replace(result, output=result.output + "\n")
        return dataclasses.replace(result, duration_s=time.monotonic() - started)


__all__ = ["TOOL_NAMES", "ToolResult", "Toolbox"]
