"""Reading a model reply (docs/protocol.md §2, §5): reasoning, answer, and its tool call.

A reply the protocol cannot use is not an exception here but a value: the agent loop
answers it with a user message (:attr:`ReplyError.feedback`) and carries on, or takes
it as the final summary.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum

from cwm_agent.protocol.chat import THINK_END
from cwm_agent.protocol.prompts import format_error_message

TOOL_CALL_PATTERN = re.compile(r"<tool:\s([a-zA-Z_]+)>\n(.*?)\n</tool>", re.DOTALL)
DEFAULT_TOOLS = ("bash", "edit", "create", "submit")


class ReplyErrorKind(Enum):
    """What is wrong with a reply, one member per message of §5."""

    THINKING_END = "thinking_end"
    MULTIPLE_TOOL_CALLS = "multiple_tool_calls"
    TAG_MISMATCH = "tag_mismatch"
    NO_TOOL_CALL = "no_tool_call"
    BLANK_ARGUMENT = "blank_argument"
    UNKNOWN_TOOL = "unknown_tool"


@dataclass(frozen=True)
class ReplyError:
    """Why a reply holds no usable tool call, with the message the model is shown."""

    kind: ReplyErrorKind
    message: str

    @property
    def error_type(self) -> str:
        """The exception name CWM's environment reported: the model saw it."""
        return "NoSuchToolError" if self.kind is ReplyErrorKind.UNKNOWN_TOOL else "FormatError"

    @property
    def feedback(self) -> str:
        """The user message that answers the reply, e.g. ``FormatError: No tool calls found``."""
        return format_error_message(self.error_type, self.message)


@dataclass(frozen=True)
class ToolCall:
    name: str
    argument: str


@dataclass(frozen=True)
class ParsedReply:
    """A reply split into its answer (the text after ``</think>``) and either a tool
    call or the error that prevented one."""

    answer: str
    tool_call: ToolCall | None = None
    error: ReplyError | None = None

    def __post_init__(self) -> None:
        if (self.tool_call is None) == (self.error is None):
            raise ValueError("a parsed reply has either a tool call or an error")

    @property
    def is_final_response(self) -> bool:
        """Whether, after a successful submission, this reply ends the episode as the
        model's final summary: its reasoning was well formed but its answer yields no
        usable tool call. CWM's evaluation treated any such reply this way (also one
        with stray tool tags, e.g. a summary quoting ``<tool: submit>``); a reply
        without any tool tag has ``error.kind`` ``NO_TOOL_CALL``."""
        return self.error is not None and self.error.kind is not ReplyErrorKind.THINKING_END


def parse_reply(
    text: str, tools: Collection[str] = DEFAULT_TOOLS, think: bool = True
) -> ParsedReply:
    """Parse a generated reply (without its stop token), checking in CWM's order:

    1. in reasoning mode, ``</think>`` occurs exactly once; the answer is what follows;
    2. at most one tool call matches: more is reported with their names even when
       stray tags are present too;
    3. the ``<tool:`` and ``</tool>`` counts equal the number of matches, so
       ``No tool calls found`` means the answer holds no tool tag at all;
    4. at least one call was found;
    5. the argument is not blank, checked before the name, so a blank call of an
       unknown tool is a format error;
    6. the tool is one of ``tools`` (``NoSuchToolError``).

    The argument is returned as written, without the newlines around it.
    """
    answer = text
    if think:
        ends = text.count(THINK_END)
        answer = text.split(THINK_END, 1)[-1]
        if ends != 1:
            return _failed(
                answer,
                ReplyErrorKind.THINKING_END,
                f"Expected exactly one thinking end token, got {ends}",
            )

    calls = TOOL_CALL_PATTERN.findall(answer)
    if len(calls) > 1:
        names = ", ".join(name for name, _ in calls)
        return _failed(
            answer,
            ReplyErrorKind.MULTIPLE_TOOL_CALLS,
            f"Expected one tool call, but found {len(calls)}: {names}. "
            "Ensure only one <tool:...></tool> block is present in the response.",
        )
    opening, closing = answer.count("<tool:"), answer.count("</tool>")
    if opening != len(calls) or closing != len(calls):
        return _failed(
            answer,
            ReplyErrorKind.TAG_MISMATCH,
            f"Mismatch in tool tag counts: found {len(calls)} tool calls via regex, "
            f"but counted {opening} opening tags and {closing} closing tags.",
        )
    if not calls:
        return _failed(answer, ReplyErrorKind.NO_TOOL_CALL, "No tool calls found")

    [(name, argument)] = calls
    if not argument.strip():
        return _failed(
            answer,
            ReplyErrorKind.BLANK_ARGUMENT,
            f"Tool '{name}' requires non-empty arguments, "
            "but received empty or whitespace-only input.",
        )
    if name not in tools:
        return _failed(answer, ReplyErrorKind.UNKNOWN_TOOL, f"Tool '{name}' not found.")
    return ParsedReply(answer, tool_call=ToolCall(name, argument))


def _failed(answer: str, kind: ReplyErrorKind, message: str) -> ParsedReply:
    return ParsedReply(answer, error=ReplyError(kind, message))
