"""The policy interface: conversations in, assistant replies out.

A backend renders conversations itself (text for servers, ids for local
weights) through `cwm_agent.protocol`, so every backend sends CWM exactly the
conversation it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from cwm_agent.errors import UserError
from cwm_agent.protocol.chat import ChatTokenizer, Message

FinishReason = Literal["stop", "length"]
TokenLimit = int | Sequence[int]  # one limit for every conversation, or one each


class PolicyError(UserError):
    """A policy cannot be loaded or cannot answer; the message is meant for users."""


@dataclass(frozen=True)
class Completion:
    """One assistant reply: the text generated after `<think>\\n`, without its stop token."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    stop: str | None  # the stop token that ended the reply; None when cut at the length limit
    duration_s: float
    token_ids: tuple[int, ...] | None = None


class Policy(Protocol):
    """Anything that continues CWM conversations."""

    @property
    def name(self) -> str: ...

    @property
    def tokenizer(self) -> ChatTokenizer | None:
        """The model's tokenizer, for exact token accounting; None means estimate."""
        ...

    def complete(
        self, conversations: Sequence[Sequence[Message]], max_new_tokens: TokenLimit
    ) -> list[Completion]:
        """One reply per conversation, each ending at a stop token or its token limit."""
        ...


def per_conversation(limit: TokenLimit, count: int) -> list[int]:
    """The token limit of each of `count` conversations."""
    limits = [limit] * count if isinstance(limit, int) else list(limit)
    if len(limits) != count:
        raise ValueError(f"{len(limits)} token limits for {count} conversations")
    return limits
