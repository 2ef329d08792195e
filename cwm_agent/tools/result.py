"""What a tool call returns to the agent loop."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ToolResult:
    """`output` is the feedback the model sees inside `<output>`.

    `ok` tells the host whether the call did what it asked (for bash: the
    session survived); `exit_code` is bash's; `submission` is set by a
    successful submit, exact (undecodable bytes kept as surrogates).
    """

    output: str
    ok: bool
    exit_code: int | None = None
    duration_s: float = 0.0
    submission: str | None = None


def readable(text: str) -> str:
    """Text for the model and for JSON: bytes that were not UTF-8 (kept as
    surrogates so files round-trip exactly) shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
