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
    tokens_used: int = Field(0, description="the context's size at the end")
    prompt_tokens: int = Field(0, description="summed over the replies: what an API bills as input")
    completion_tokens: int = Field(0, description="summed over the replies: tokens generated")
    submission: str | None = Field(None, description="the last submission, readable text")
    submission_bytes: bytes | None = Field(None, exclude=True, description="exactly as submitted")
    started_at: str
    duration_s: float = 0.0
    generation_s: float = Field(0.0, description="model time: seconds waiting for replies")
    tools_s: float = Field(0.0, description="sandbox time: seconds of tool calls")
    messages: list[MessageRecord] = Field(default_factory=list)


class Usage(BaseModel):
    """What some work cost: tokens the model read and wrote, seconds in the model and
    in sandboxes; the sum over rollouts (and test runs) is what a budget is planned from."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_s: float = 0.0
    sandbox_s: float = 0.0

    @classmethod
    def of(cls, trajectory: Trajectory) -> Usage:
        return cls(
            prompt_tokens=trajectory.prompt_tokens,
            completion_tokens=trajectory.completion_tokens,
            model_s=round(trajectory.generation_s, 3),
            sandbox_s=round(trajectory.tools_s, 3),
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            model_s=round(self.model_s + other.model_s, 3),
            sandbox_s=round(self.sandbox_s + other.sandbox_s, 3),
        )
