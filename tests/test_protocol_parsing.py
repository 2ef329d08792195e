"""Parsing replies into a tool call or the exact error CWM's environment reported (§2, §5)."""

from __future__ import annotations

import pytest

from cwm_agent.protocol import ParsedReply, ReplyError, ReplyErrorKind, ToolCall, parse_reply

THINK = "Reasoning about <tool: bash> without closing it.\n</think>\n"


def test_tool_call_is_parsed_with_its_argument_as_written() -> None:
    reply = parse_reply(THINK + "I will edit.\n<tool: edit>\nsrc/a.py\n  x = 1\n\n</tool>\n")
    assert reply.tool_call == ToolCall("edit", "src/a.py\n  x = 1\n")
    assert reply.error is None
    assert reply.answer == "\nI will edit.\n<tool: edit>\nsrc/a.py\n  x = 1\n\n</tool>\n"
    assert not reply.is_final_response


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        (
            "no reasoning end <tool: bash>\nls\n</tool>",
            ReplyErrorKind.THINKING_END,
            "Expected exactly one thinking end token, got 0",
        ),
        (
            "a</think>b</think>\n<tool: bash>\nls\n</tool>",
            ReplyErrorKind.THINKING_END,
            "Expected exactly one thinking end token, got 2",
        ),
        (
            THINK + "<tool: bash>\nls\n</tool>\n<tool: submit>\np.diff\n</tool>\n<tool: x",
            ReplyErrorKind.MULTIPLE_TOOL_CALLS,
            "Expected one tool call, but found 2: bash, submit. "
            "Ensure only one <tool:...></tool> block is present in the response.",
        ),
        (
            THINK + "<tool: bash>\nls\n</tool>\nlater: </tool>",
            ReplyErrorKind.TAG_MISMATCH,
            "Mismatch in tool tag counts: found 1 tool calls via regex, "
            "but counted 1 opening tags and 2 closing tags.",
        ),
        (
            THINK + "<tool: bash> ls </tool>",
            ReplyErrorKind.TAG_MISMATCH,
            "Mismatch in tool tag counts: found 0 tool calls via regex, "
            "but counted 1 opening tags and 1 closing tags.",
        ),
        (
            THINK + "<tool:bash>\nls\n</tool>",
            ReplyErrorKind.TAG_MISMATCH,
            "Mismatch in tool tag counts: found 0 tool calls via regex, "
            "but counted 1 opening tags and 1 closing tags.",
        ),
        (THINK + "All done.", ReplyErrorKind.NO_TOOL_CALL, "No tool calls found"),
        (THINK, ReplyErrorKind.NO_TOOL_CALL, "No tool calls found"),
        (
            THINK + "<tool: bash>\n \t\n</tool>",
            ReplyErrorKind.BLANK_ARGUMENT,
            "Tool 'bash' requires non-empty arguments, "
            "but received empty or whitespace-only input.",
        ),
        (
            THINK + "<tool: python>\n\n\n</tool>",
            ReplyErrorKind.BLANK_ARGUMENT,
            "Tool 'python' requires non-empty arguments, "
            "but received empty or whitespace-only input.",
        ),
        (
            THINK + "<tool: python>\nprint(1)\n</tool>",
            ReplyErrorKind.UNKNOWN_TOOL,
            "Tool 'python' not found.",
        ),
    ],
)
def test_errors_carry_the_exact_message(text: str, kind: ReplyErrorKind, message: str) -> None:
    reply = parse_reply(text)
    assert reply.tool_call is None
    assert reply.error == ReplyError(kind, message)


def test_error_types_and_feedback() -> None:
    none = parse_reply(THINK + "Summary.").error
    assert none is not None
    assert none.error_type == "FormatError"
    assert none.feedback == "FormatError: No tool calls found"

    unknown = parse_reply(THINK + "<tool: python>\n1\n</tool>").error
    assert unknown is not None
    assert unknown.error_type == "NoSuchToolError"
    assert unknown.feedback == "NoSuchToolError: Tool 'python' not found."


def test_a_reply_without_tool_call_can_be_the_final_summary() -> None:
    summary = parse_reply(THINK + "## Issue Summary\n\nFixed it.")
    assert summary.error is not None
    assert summary.error.kind is ReplyErrorKind.NO_TOOL_CALL
    assert summary.answer == "\n## Issue Summary\n\nFixed it."
    assert summary.is_final_response
    # As in CWM's evaluation, a summary quoting a tool tag still ends the episode...
    assert parse_reply(THINK + "I used `<tool: submit>` to submit.").is_final_response
    # ...but not a reply whose reasoning never ended.
    assert not parse_reply("Still thinking. ## Summary").is_final_response


def test_known_tools_are_configurable() -> None:
    text = THINK + "<tool: bash>\nls\n</tool>"
    assert parse_reply(text, tools=("submit",)).error == ReplyError(
        ReplyErrorKind.UNKNOWN_TOOL, "Tool 'bash' not found."
    )
    assert parse_reply(text, tools={"bash"}).tool_call == ToolCall("bash", "ls")


def test_without_reasoning_mode_the_whole_reply_is_the_answer() -> None:
    reply = parse_reply("<tool: bash>\necho '</think>'\n</tool>", think=False)
    assert reply.tool_call == ToolCall("bash", "echo '</think>'")
    assert reply.answer == "<tool: bash>\necho '</think>'\n</tool>"


def test_a_parsed_reply_has_exactly_one_outcome() -> None:
    with pytest.raises(ValueError):
        ParsedReply("x")
    with pytest.raises(ValueError):
        ParsedReply(
            "x",
            tool_call=ToolCall("bash", "ls"),
            error=ReplyError(ReplyErrorKind.NO_TOOL_CALL, "No tool calls found"),
        )
