"""The text the bot publishes: the draft PR's body, or the comment on a failure.

The same text is written to `summary.md`, so `--dry-run` and `--output-only`
show exactly what would be posted.
"""

from __future__ import annotations

import re

from cwm_agent.ci.verify import TestEvidence
from cwm_agent.fix import FixResult
from cwm_agent.view import PAGE


def pull_body(
    issue: int,
    why: str,
    summary: str,
    evidence: TestEvidence | None,
    fix: FixResult,
    trajectory_link: str,
) -> str:
    stats = fix.patch_stats
    return "\n\n".join(
        [
            f"Fixes #{issue}.",
            f"Draft opened by cwm-agent ({why}). Review it as you would a contributor's "
            "patch: nothing here was written or checked by a person.",
            f"## Model summary\n\n{_nested(summary) or '(the model gave no summary)'}",
            f"## Test evidence\n\n{_evidence(evidence)}",
            "## Run\n\n"
            f"- model `{fix.model}`, {fix.turns} turns, {fix.duration_s:.0f}s\n"
            f"- patch: {stats.files} file(s), +{stats.additions} -{stats.deletions}\n"
            + _trajectory(trajectory_link),
        ]
    )


def failure_comment(
    refusal: str, summary: str, evidence: TestEvidence | None, fix: FixResult, trajectory_link: str
) -> str:
    reason = f" ({fix.reason})" if fix.reason else ""
    submitted = (
        f"a patch of {fix.patch_stats.files} file(s), +{fix.patch_stats.additions} "
        f"-{fix.patch_stats.deletions}"
        if fix.patch_submitted
        else "no patch"
    )
    parts = [
        f"cwm-agent did not open a pull request: {refusal}",
        "## What was tried\n\n"
        f"- model `{fix.model}` ran {fix.turns} turns in {fix.duration_s:.0f}s and ended "
        f"`{fix.status}`{reason}\n"
        f"- it submitted {submitted}\n" + _trajectory(trajectory_link),
    ]
    if summary:
        parts.append(f"## The model's summary\n\n{_nested(summary)}")
    if evidence is not None:
        parts.append(f"## Test evidence\n\n{_evidence(evidence)}")
    return "\n\n".join(parts)


def _trajectory(link: str) -> str:
    return f"- trajectory: {link}; its `{PAGE}` shows the run turn by turn in a browser"


def _evidence(evidence: TestEvidence | None) -> str:
    if evidence is None:
        return (
            "No test command was configured (`--test-cmd`), so the only evidence is the "
            "model's own, in its summary and trajectory."
        )
    verdict = "passed" if evidence.passed else "failed"
    return (
        f"`{evidence.command}` {verdict} on the patched tree in a fresh sandbox "
        f"(exit {evidence.exit_code}, {evidence.duration_s:.1f}s).\n\n"
        f"<details><summary>output (last lines)</summary>\n\n{_fence(evidence.output_tail)}\n\n"
        "</details>"
    )


def _nested(markdown: str) -> str:
    """The model's headings one level down, so they sit under ours (code left alone)."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,5} ", line):
            line = "#" + line
        lines.append(line)
    return "\n".join(lines)


def _fence(text: str) -> str:
    """A code block no backtick run inside `text` can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text.rstrip()}\n{fence}"
