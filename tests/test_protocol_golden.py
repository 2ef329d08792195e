"""Prompts rendered by cwm_agent.protocol, compared character by character with
tests/golden, whose files are in turn checked against cwm-protocol.md itself (the
project's record of CWM's released interface, kept beside them as a fixture)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cwm_agent.protocol import Message, prompts, render_text
from tests.helpers import SAMPLE_ISSUE

GOLDEN = Path(__file__).parent / "golden"
DOCUMENT = GOLDEN / "cwm-protocol.md"

SAMPLE_PATCH = """diff --git a/pkg/parse.py b/pkg/parse.py
--- a/pkg/parse.py
+++ b/pkg/parse.py
@@ -1,2 +1,2 @@
 def parse(data):
-    return data["items"]
+    return data.get("items", [])
"""
SAMPLE_TEST = """from pkg import parse

print("Issue resolved" if parse({}) == [] else "Issue reproduced")
"""
SAMPLE_FEEDBACK = "total 8\ndrwxr-xr-x 2 root root 4096 Jan  1 00:00 pkg\n"


def _no_truncation(text: str) -> int:
    return 0


RENDERED: dict[str, Callable[[], str]] = {
    "conversation.txt": lambda: render_text(
        [Message.system("  You are terse.\n"), Message.user("\nHello!  ")]
    ),
    "edit_tool_format.txt": lambda: prompts.EDIT_TOOL_FORMAT,
    "system_prompt.txt": lambda: prompts.system_prompt(
        prompts.environment_prompt(session_timeout=120, context_size=131072, max_turns=128)
    ),
    "issue_prompt.txt": lambda: prompts.issue_prompt(SAMPLE_ISSUE, "/testbed", _no_truncation),
    "prompt_testgen.txt": lambda: prompts.testgen_prompt(SAMPLE_ISSUE, "/testbed", _no_truncation),
    "tool_result.txt": lambda: prompts.tool_result(
        SAMPLE_FEEDBACK, remaining_turns=125, remaining_tokens=120034
    ),
    "submission_feedback.txt": lambda: prompts.submission_feedback(SAMPLE_PATCH),
    "submission_feedback_testgen.txt": lambda: prompts.testgen_submission_feedback(SAMPLE_TEST),
}


def fenced_blocks(markdown: str) -> list[str]:
    """Contents of the top-level fenced blocks. Blocks in the document nest (a bare
    fence opens a prompt, which contains fences with an info string), so a bare fence
    closes the innermost open block."""
    blocks: list[str] = []
    lines: list[str] = []
    depth = 0
    for line in markdown.split("\n"):
        if depth == 0:
            if line.startswith("```"):
                depth, lines = 1, []
            continue
        if line == "```":
            depth -= 1
            if depth == 0:
                blocks.append("\n".join(lines))
                continue
        elif line.startswith("```"):
            depth += 1
        lines.append(line)
    return blocks


def expected_from_document(markdown: str) -> dict[str, str]:
    """What each golden file must hold, filled in from the document's own blocks."""
    blocks = fenced_blocks(markdown)

    def block(start: str) -> str:
        [found] = [b for b in blocks if b.startswith(start)]
        return found

    def chat(start: str) -> str:  # §1 writes newlines in its chat blocks as \n
        return block(start).replace("\\n", "\n")

    def message(role: str, body: str) -> str:
        template = chat("<|start_header_id|>ROLE<|end_header_id|>")
        return template.replace("ROLE", role).replace("BODY", body)

    environment = (
        block("You are working in a linux container.")
        .replace("{session_timeout}", "120-second")
        .replace("{context_size}", "131072")
        .replace("{max_turns}", "128")
    )
    edit_start = environment.index("<tool: edit>")
    edit_end = environment.index("</tool>", edit_start) + len("</tool>")
    return {
        "conversation.txt": "<|begin_of_text|>"
        + message("system", "You are terse.")
        + message("user", "Hello!")
        + chat("<|start_header_id|>assistant<|end_header_id|>"),
        "edit_tool_format.txt": environment[edit_start:edit_end],
        "system_prompt.txt": block("You are a helpful AI assistant.").replace(
            "{environment}", environment
        ),
        "issue_prompt.txt": block("Solve the following issue")
        .replace("{issue}", SAMPLE_ISSUE)
        .replace("{repo_root}", "/testbed"),
        "prompt_testgen.txt": block("Here is a GitHub issue")
        .replace("{issue}", SAMPLE_ISSUE)
        .replace("{repo_root}", "/testbed"),
        "tool_result.txt": block("<output>")
        .replace("{feedback}", SAMPLE_FEEDBACK)
        .replace("{remaining_turns}", "125")
        .replace("{remaining_tokens}", "120034"),
        "submission_feedback.txt": block("The following patch content").replace(
            "{pred_patch}", SAMPLE_PATCH
        ),
        "submission_feedback_testgen.txt": block("Review the following test").replace(
            "{test}", SAMPLE_TEST
        ),
    }


def golden(name: str) -> str:
    return (GOLDEN / name).read_bytes().decode("utf-8")


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_rendering_matches_golden(name: str) -> None:
    assert RENDERED[name]() == golden(name)


def test_goldens_match_the_protocol_document() -> None:
    expected = expected_from_document(DOCUMENT.read_text(encoding="utf-8"))
    assert sorted(expected) == sorted(RENDERED)
    for name, text in expected.items():
        assert golden(name) == text, name
