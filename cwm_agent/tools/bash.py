"""The `bash` tool: one command in the persistent session (docs/protocol.md §6)."""

from __future__ import annotations

from cwm_agent.sandbox import ShellSession
from cwm_agent.tools.result import ToolResult

_RESTARTED = " A fresh session has started with the current working directory reset to default."
FAILURE_MESSAGES = {
    "terminated": "The current session has terminated unexpectedly." + _RESTARTED,
    "timeout": "The current session has terminated due to timeout." + _RESTARTED,
    "output": "The current session has terminated because your previous command produced "
    "too much output." + _RESTARTED,
}


def run_bash(session: ShellSession, command: str) -> ToolResult:
    result = session.run(command)
    if result.failure is not None:
        return ToolResult(FAILURE_MESSAGES[result.failure], ok=False, duration_s=result.duration_s)
    return ToolResult(
        result.output, ok=True, exit_code=result.exit_code, duration_s=result.duration_s
    )
