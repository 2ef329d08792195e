"""Generated reproduction tests (docs/protocol.md §7): which to keep, what they say.

A test speaks through three markers. On the original code a kept test prints
`Issue reproduced` and neither other marker; on a candidate it counts as a pass
only when it prints `Issue resolved` and neither other marker (Agentless' rule,
which CWM's recipe follows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cwm_agent import pyparse
from cwm_agent.tts.selection import normalize
from cwm_agent.workspace import CommandRun

REPRODUCED, RESOLVED, OTHER = "Issue reproduced", "Issue resolved", "Other issues"
TEST_FILE = "test_issue.py"
TEST_COMMAND = f"python {TEST_FILE}"
TOP_GROUPS = 5


def static_problem(source: str) -> str | None:
    """Why a submitted test cannot be used before running it, or None."""
    try:
        pyparse.parse(source)
    except SyntaxError as exc:
        return f"does not parse as Python: line {exc.lineno}: {exc.msg}"
    missing = [marker for marker in (REPRODUCED, RESOLVED) if marker not in source]
    if missing:
        return "lacks the " + " and ".join(f"{m!r}" for m in missing) + " marker"
    return None


def distinct(sources: Mapping[int, bytes]) -> dict[int, list[int]]:
    """The tests that are one program, each under its lowest number: the same
    source once comments and docstrings are out is run once, voted as many."""
    alike: dict[str, list[int]] = {}
    for test in sorted(sources):
        text = normalize(TEST_FILE, sources[test].decode("utf-8", "replace"))
        alike.setdefault(text, []).append(test)
    return {tests[0]: tests for tests in alike.values()}


def reproduction_problem(run: CommandRun) -> str | None:
    """Why a test run on the original code does not reproduce the issue, or None."""
    if run.timed_out:
        return f"timed out on the original code after {run.duration_s:.0f}s"
    printed = [m for m in (REPRODUCED, RESOLVED, OTHER) if m in run.output]
    if REPRODUCED not in printed:
        shown = ", ".join(repr(m) for m in printed) or "no marker"
        return f"does not reproduce the issue on the original code: printed {shown}"
    if len(printed) > 1:
        extra = " and ".join(repr(m) for m in printed if m != REPRODUCED)
        return f"printed {extra} as well as 'Issue reproduced' on the original code"
    return None


def passes(run: CommandRun) -> bool:
    """The candidate resolves the issue according to this test."""
    out = run.output
    return not run.timed_out and RESOLVED in out and REPRODUCED not in out and OTHER not in out


@dataclass(frozen=True)
class BehaviourGroup:
    """Tests that agree: they call the same set of candidates resolved."""

    resolved_by: frozenset[int]
    tests: tuple[int, ...]


def majority_groups(
    resolved_by: Mapping[int, frozenset[int]], top: int = TOP_GROUPS
) -> list[BehaviourGroup]:
    """The `top` largest behaviour groups of kept tests.

    Ties in size go to the group whose first test has the lowest index, i.e.
    the test-generation rollout numbered first: deterministic, and independent
    of which rollout happened to finish first.
    """
    members: dict[frozenset[int], list[int]] = {}
    for test in sorted(resolved_by):
        members.setdefault(resolved_by[test], []).append(test)
    groups = [BehaviourGroup(behaviour, tuple(tests)) for behaviour, tests in members.items()]
    groups.sort(key=lambda group: (-len(group.tests), group.tests[0]))
    return groups[:top]


def selected_tests(groups: Sequence[BehaviourGroup]) -> list[int]:
    return sorted(test for group in groups for test in group.tests)
