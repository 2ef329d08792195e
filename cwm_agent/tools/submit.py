"""The `submit` tool: a patch file (issue solving) or a test file
(test generation); docs/protocol.md §6.5."""

from __future__ import annotations

from typing import Literal

from cwm_agent.protocol.prompts import submission_feedback, testgen_submission_feedback
from cwm_agent.sandbox import FileChangedError, FileTooLargeError
from cwm_agent.tools.files import MAX_SUBMISSION_BYTES, ToolFiles
from cwm_agent.tools.result import ToolResult, readable

SubmitKind = Literal["patch", "test"]


def run_submit(files: ToolFiles, argument: str, kind: SubmitKind = "patch") -> ToolResult:
    path = argument.strip()
    try:
        found = files.sandbox.read(files.resolve(path), MAX_SUBMISSION_BYTES)
    except (FileTooLargeError, FileChangedError) as exc:
        return ToolResult(not_submitted(path, exc), ok=False)
    if found is None:
        return ToolResult(not_submitted(path, None), ok=False)
    content = found[1].decode("utf-8", "surrogateescape")  # exact: patch.diff must apply
    return check_submission(path, content, kind)


def not_submitted(path: str, exc: FileTooLargeError | FileChangedError | None) -> str:
    """Why the file was not submitted: missing (no `exc`), too large, or changing."""
    if isinstance(exc, FileTooLargeError):
        return (
            f"Failed to submit {path}. It is too large ({exc.size} bytes, the limit is "
            f"{exc.limit})."
        )
    message = f"Failed to submit {path}. Make sure it exists and is readable."
    return message if exc is None else f"{message} It changed while it was being read."


def check_submission(path: str, content: str, kind: SubmitKind) -> ToolResult:
    """The verdict on a file read for submission (`content` exact, undecodable bytes
    kept as surrogates): refused, or accepted with the feedback that quotes it."""
    if not content.strip():
        return ToolResult(f"Failed to submit {path}. It is an empty file.", ok=False)
    if kind == "test":
        feedback = testgen_submission_feedback(readable(content))
        return ToolResult(feedback, ok=True, submission=content)
    if not content.startswith("diff"):
        return ToolResult(f"Failed to submit {path}. It is not a valid diff file.", ok=False)
    return ToolResult(submission_feedback(readable(content)), ok=True, submission=content)
