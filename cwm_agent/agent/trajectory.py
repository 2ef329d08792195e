"""The record of one rollout: every message, what it cost, and how it ended."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Status = Literal[
    "running", "finished", "max_turns", "time_limit", "context_exceeded", "error", "interrupted"
]


class ToolCallRecord(BaseModel):
    name: str
    argument: str


class ToolResultRecord(BaseModel):
    output: str  # the feedback inside <output>, before the budget notice
    ok: bool
    exit_code: int | None = None
    duration_s: float


class MessageRecord(BaseModel):
    """One message as the model saw it (assistant: as it generated it)."""

    role: str
    content: str
    turn: int = Field(description="number of assistant replies so far")
    stop: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens: int | None = Field(None, description="tokens this message added to the context")
    duration_s: float | None = None
    tool_call: ToolCallRecord | None = None
    tool_result: ToolResultRecord | None = None
    format_error: str | None = None


class Trajectory(BaseModel):
    """Everything needed to inspect, score or replay a rollout (`trajectory.json`)."""

    version: int = 1
    task: Literal["issue", "testgen"]
    model: str
    config: dict[str, Any]
    issue: str
    status: Status = "running"
    reason: str | None = None
    turns: int = 0
    tokens_used: int = 0
    submission: str | None = Field(None, description="the last submission, readable text")
    submission_bytes: bytes | None = Field(None, exclude=True, description="exactly as submitted")
    started_at: str
    duration_s: float = 0.0
    generation_s: float = 0.0
    tools_s: float = 0.0
    messages: list[MessageRecord] = Field(default_factory=list)
