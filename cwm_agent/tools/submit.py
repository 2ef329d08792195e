"""The `submit` tool: a patch file (issue solving) or a test file (test generation)."""

from __future__ import annotations

from typing import Literal

from cwm_agent.protocol.prompts import submission_feedback, testgen_submission_feedback
from cwm_agent.sandbox import FileChangedError, FileTooLargeError
from cwm_agent.tools.files import MAX_SUBMISSION_BYTES, ToolFiles
from cwm_agent.tools.result import ToolResult, readable

SubmitKind = Literal["patch", "test"]


def run_submit(files: ToolFiles, argument: str, kind: SubmitKind = "patch") -> ToolResult:
    path = argument.strip()
    unreadable = f"Failed to submit {path}. Make sure it exists and is readable."
    try:
        found = files.sandbox.read(files.resolve(path), MAX_SUBMISSION_BYTES)
    except FileTooLargeError as exc:
        return ToolResult(
            f"Failed to submit {path}. It is too large ({exc.size} bytes, the limit is "
            f"{exc.limit}).",
            ok=False,
        )
    except FileChangedError:
        return ToolResult(f"{unreadable} It changed while it was being read.", ok=False)
    if found is None:
        return ToolResult(unreadable, ok=False)
    content = found[1].decode("utf-8", "surrogateescape")  # exact: patch.diff must apply
    if not content.strip():
        return ToolResult(f"Failed to submit {path}. It is an empty file.", ok=False)
    if kind == "test":
        feedback = testgen_submission_feedback(readable(content))
        return ToolResult(feedback, ok=True, submission=content)
    if not content.startswith("diff"):
        return ToolResult(f"Failed to submit {path}. It is not a valid diff file.", ok=False)
    return ToolResult(submission_feedback(readable(content)), ok=True, submission=content)
