"""Prompt and feedback texts of CWM's agentic protocol (docs/protocol.md §2 to §7).

The model was trained on these strings: they are data and must stay byte-for-byte
(tests/golden holds the expected renderings, checked against the protocol document).
"""

# ruff: noqa: E501  (prompt data keeps the document's long lines verbatim)

from __future__ import annotations

from cwm_agent.protocol.truncation import TokenCounter, keep_head, keep_tail

MAX_PROMPT_TOKENS = 8192
MAX_TOOL_MESSAGE_TOKENS = 32768

EDIT_TOOL_FORMAT = """<tool: edit>
[path]
<<<<<<< SEARCH
[search_lines]
=======
[replacement_lines]
>>>>>>> REPLACE
</tool>"""

_SYSTEM_PROMPT = """You are a helpful AI assistant. You always reason before responding, using the following format:

<think>
your internal reasoning
</think>
your external response

# Environment

{environment}"""

_ENVIRONMENT_INTRO = "You are working in a linux container. The container session is persistent but will restart when encountering errors or after a {session_timeout} session timeout in each turn. You are also constrained by a {context_size} total context window limit. You can interact with the container through the following tool interface for at most {max_turns} turns. Here are the specifications:"

_TOOL_SPECS = (
    """<tool: bash>
[command(s)]
</tool>
Executes bash command(s) [command(s)] in the current session. [command(s)] can be any non-interactive bash command(s), either single or multi-line.""",
    EDIT_TOOL_FORMAT
    + """
Replaces [search_lines] from [path] with [replacement_lines], where [path] must exist and [search_lines] must uniquely and exactly match one or more consecutive lines from the original file, including indentations and whitespaces.""",
    """<tool: create>
[path]
[content]
</tool>
Creates a new file at [path] with [content], where [path] must not exist, but its parent directory must exist.""",
    """<tool: submit>
[result]
</tool>
Marks [result] as your final submission. The meaning and format of [result] depends on the specific user request.""",
)

_REQUIREMENTS = """REQUIREMENTS:
* You cannot invoke more than one tool in each step.
* You must invoke exactly one tool in each step before any <tool: submit> call.
* After successful submission, provide a final response if the request is resolved, otherwise continue iterating. You cannot provide a final response before invoking <tool: submit>."""

_ISSUE_PROMPT = """Solve the following issue by implementing the necessary code changes and submitting a patch file:

<issue_description>
{issue}
</issue_description>

The [result] argument of <tool: submit> should be the path to a patch file that resolves the issue. This file must be accessible from the current working directory and should contain the end-to-end code changes in git diff format. You can refine and submit your patch multiple times as needed to ensure correctness.

Once you've submitted at least once and are confident in your solution, provide a final response summarizing your work using the following markdown template as a guide. Feel free to adjust the sections as necessary to fit the specific issue and solution:

```markdown
## Issue Summary

Brief description of the issue (bug/feature/enhancement), affected component, and expected outcome.

## Investigation and Reproduction

Steps taken to understand and reproduce the issue: commands executed, test cases run, error messages, debugging approach, and root cause analysis. For features, describe requirement analysis and codebase exploration.

## Solution and Code Changes

High-level approach and rationale for the chosen solution. Specific modifications by file/component, including new functions, classes, or architectural decisions. Explain how changes work together if multiple files are involved.

## Testing and Verification

Description of how you ensure the patch fully resolves the issue, including new tests added (or test changes made) to verify correctness, how you ran existing tests to prevent regressions, and how comprehensive your testing process is (e.g., what edge cases you covered, how you validated correctness across different scenarios).
```

Your primary objective is to ensure patch correctness above all else - thoroughly explore the codebase, think hard, and leverage significant execution to verify correctness by writing comprehensive tests to validate your solution and running existing tests to prevent regressions. Only submit when you are genuinely confident in your patch's correctness.

I've uploaded the corresponding code repository at {repo_root} and installed all the necessary dependencies. Now, the bash session has started, with the current working directory set to the repo root."""

_TESTGEN_PROMPT = """Here is a GitHub issue and you are tasked to generate a test (`test_issue.py`) that can be used to reproduce and verify the fix for the issue:

<issue_description>
{issue}
</issue_description>

This test file should be completely self-contained and executable directly with `python test_issue.py`, without requiring any testing frameworks like pytest or unittest.

IMPORTANT GUIDELINES:

Create a standalone Python script (test_issue.py) that:
   - Imports only the necessary modules from the repository
   - Sets up the minimum environment needed to reproduce the issue
   - Contains all logic within the script itself (no external test dependencies)
   - Runs quickly and terminates itself (no background servers or long-running processes)

CRITICAL: For each of the test cases: your test script MUST use these EXACT print statements to indicate test results for each test case:
   - Print "Issue reproduced" when the code confirms the bug exists
   - Print "Issue resolved" when the code runs without the issue
   - Print "Other issues" if there are any unexpected problems

Example format for the test script:

```python
from sqlfluff import lint

def test__rules__std_L060_raised() -> None:
    try:
        sql = "SELECT   IFNULL(NULL, 100),
            NVL(NULL,100);"
        result = lint(sql, rules=["L060"])
        assert len(result) == 2
    except:
        print("Other issues")
        return

    try:
        assert result[0]["description"] == "Use 'COALESCE' instead of 'IFNULL'."
        assert result[1]["description"] == "Use 'COALESCE' instead of 'NVL'."
        print("Issue resolved")
    except AssertionError:
        print("Issue reproduced")
        return

    return

test__rules__std_L060_raised()
```

The [result] argument of <tool: submit> should be the path to the generated test file (`test_issue.py`), like this:

<tool: submit>
test_issue.py
</tool>

Your final response should be a summary of how the test works. I've uploaded the corresponding code repository at {repo_root} and installed all the necessary dependencies. Now, the bash session has started, with the current working directory set to the repo root."""

_TOOL_RESULT = """<output>
{feedback}
</output>

<budget>
* Remaining turns: {remaining_turns}
* Remaining tokens: {remaining_tokens}
</budget>"""

_SUBMISSION_FEEDBACK = """The following patch content is marked as your final submission:

<submission>
{patch}
</submission>

Review the patch content and ensure it correctly resolves the issue. If necessary, you can continue refining the patch and submit an updated version."""

_TESTGEN_SUBMISSION_FEEDBACK = """Review the following test which is marked as a submission:

<submission>
{test}
</submission>"""


def system_prompt(environment: str) -> str:
    """The reasoning-mode system prompt (§2) around an environment text (§3)."""
    return _SYSTEM_PROMPT.format(environment=environment.strip())


def environment_prompt(session_timeout: int, context_size: int, max_turns: int) -> str:
    """The container and tool specification (§3); ``session_timeout`` in whole seconds."""
    intro = _ENVIRONMENT_INTRO.format(
        session_timeout=f"{int(session_timeout)}-second",
        context_size=context_size,
        max_turns=max_turns,
    )
    return "\n\n".join((intro, *_TOOL_SPECS, _REQUIREMENTS))


def issue_prompt(
    issue: str,
    repo_root: str,
    count_tokens: TokenCounter,
    max_tokens: int = MAX_PROMPT_TOKENS,
) -> str:
    """The issue-solving user message (§4). If the whole message counts more than
    ``max_tokens``, its start is cut and marked ``[...]`` (the tail, with the issue's
    end and the instructions after it, is kept). ``count_tokens`` counts a user
    message with a given body, e.g. ``message_token_counter(tokenizer, "user")``."""
    text = _ISSUE_PROMPT.format(issue=issue, repo_root=repo_root)
    return keep_tail(text, max_tokens, count_tokens)


def testgen_prompt(
    issue: str,
    repo_root: str,
    count_tokens: TokenCounter,
    max_tokens: int = MAX_PROMPT_TOKENS,
) -> str:
    """The test-generation user message (§7), truncated like :func:`issue_prompt`."""
    text = _TESTGEN_PROMPT.format(issue=issue, repo_root=repo_root)
    return keep_tail(text, max_tokens, count_tokens)


def tool_result(feedback: str, remaining_turns: int, remaining_tokens: int) -> str:
    """The body of a ``tool: NAME`` message (§6): the feedback and the budget notice."""
    return _TOOL_RESULT.format(
        feedback=feedback, remaining_turns=remaining_turns, remaining_tokens=remaining_tokens
    )


def tool_result_for_estimate(feedback: str) -> str:
    """The body CWM measured to estimate a tool message's size before the budget
    numbers were known: the notice with its placeholders left unfilled."""
    return _TOOL_RESULT.replace("{feedback}", feedback)


def submission_feedback(patch: str) -> str:
    """The feedback of a successful patch submission (§6), shown inside ``<output>``."""
    return _SUBMISSION_FEEDBACK.format(patch=patch)


def testgen_submission_feedback(test: str) -> str:
    """The feedback of a successful test submission (§7)."""
    return _TESTGEN_SUBMISSION_FEEDBACK.format(test=test)


def truncate_tool_message(
    body: str, count_tokens: TokenCounter, max_tokens: int = MAX_TOOL_MESSAGE_TOKENS
) -> str:
    """Cut the end of a tool result (or format-error) message body that counts more
    than ``max_tokens`` and mark the cut with ``[...]`` (§6)."""
    return keep_head(body, max_tokens, count_tokens)


def format_error_message(error_type: str, message: str) -> str:
    """The user message answering a reply the protocol could not use (§5)."""
    return f"{error_type}: {message}"
