"""Prompt builders and the ``[...]`` token-budget truncation (§3, §4, §6)."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from cwm_agent.protocol import message_token_counter, prompts
from cwm_agent.protocol.truncation import TRUNCATION_MARKER, keep_head, keep_tail


def test_environment_prompt_fills_in_the_budget() -> None:
    text = prompts.environment_prompt(session_timeout=30, context_size=65536, max_turns=12)
    assert "after a 30-second session timeout" in text
    assert "a 65536 total context window limit" in text
    assert "for at most 12 turns." in text
    assert prompts.environment_prompt(120.0, 1, 1) == prompts.environment_prompt(120, 1, 1)  # type: ignore[arg-type]
    assert text.count(prompts.EDIT_TOOL_FORMAT) == 1


def test_system_prompt_strips_the_environment() -> None:
    assert prompts.system_prompt("\n  Env text.\n\n").endswith("# Environment\n\nEnv text.")


def test_issue_text_is_inserted_verbatim() -> None:
    issue = "Use {braces} and {issue} and <|eot_id|>\n"
    text = prompts.issue_prompt(issue, "/repo", len, 10**6)
    assert f"<issue_description>\n{issue}\n</issue_description>" in text
    assert "repository at /repo and installed" in text


def test_format_error_message() -> None:
    assert prompts.format_error_message("FormatError", "No tool calls found") == (
        "FormatError: No tool calls found"
    )


@pytest.mark.parametrize("max_tokens", [5, 6, 9, 20])
def test_keep_tail_and_keep_head_by_characters(max_tokens: int) -> None:
    text = "0123456789abcdef"
    tail = keep_tail(text, max_tokens, len)
    head = keep_head(text, max_tokens, len)
    assert len(tail) == len(head) == min(max_tokens, len(text))
    if max_tokens < len(text):
        assert tail == TRUNCATION_MARKER + text[len(text) - (max_tokens - 5) :]
        assert head == text[: max_tokens - 5] + TRUNCATION_MARKER
    else:
        assert tail == head == text


def test_marker_alone_when_nothing_fits() -> None:
    assert keep_tail("abcdefgh", 2, len) == TRUNCATION_MARKER
    assert keep_head("abcdefgh", 2, len) == TRUNCATION_MARKER


def test_issue_prompt_keeps_its_tail_within_the_token_budget(
    cwm_tokenizer: PreTrainedTokenizerFast,
) -> None:
    count = message_token_counter(cwm_tokenizer, "user")
    issue = "Traceback line with ünïcode and <|eot_id|> in it.\n" * 400
    full = prompts.issue_prompt(issue, "/testbed", count, max_tokens=10**6)
    assert count(full) > 2000

    text = prompts.issue_prompt(issue, "/testbed", count, max_tokens=2000)
    kept = text.removeprefix(TRUNCATION_MARKER)
    assert text.startswith(TRUNCATION_MARKER)
    assert full.endswith(kept)
    assert count(text) <= 2000 < count(TRUNCATION_MARKER + full[len(full) - len(kept) - 1 :])
    assert kept.endswith("with the current working directory set to the repo root.")


def test_testgen_prompt_is_truncated_the_same_way() -> None:
    text = prompts.testgen_prompt("x" * 5000, "/testbed", len, max_tokens=1000)
    assert len(text) == 1000
    assert text.startswith(TRUNCATION_MARKER)


def test_tool_message_keeps_its_head_within_the_token_budget(
    cwm_tokenizer: PreTrainedTokenizerFast,
) -> None:
    count = message_token_counter(cwm_tokenizer, "tool: bash")
    body = prompts.tool_result("log line\n" * 3000, remaining_turns=3, remaining_tokens=9)
    text = prompts.truncate_tool_message(body, count, max_tokens=1000)
    kept = text.removesuffix(TRUNCATION_MARKER)
    assert text.endswith(TRUNCATION_MARKER)
    assert body.startswith(kept)
    assert count(text) <= 1000 < count(body[: len(kept) + 1] + TRUNCATION_MARKER)
    assert prompts.truncate_tool_message("short", count) == "short"
    assert prompts.MAX_TOOL_MESSAGE_TOKENS == 32768
    assert prompts.MAX_PROMPT_TOKENS == 8192
