"""What a tool call returns to the agent loop."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ToolResult:
    """`output` is the feedback the model sees inside `<output>`.

    `ok` tells the host whether the call did what it asked (for bash: the
    session survived); `exit_code` is bash's; `submission` is set by a
    successful submit.
    """

    output: str
    ok: bool
    exit_code: int | None = None
    duration_s: float = 0.0
    submission: str | None = None
