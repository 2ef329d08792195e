"""`tts.json`: every candidate, every generated test, the regression tests and
the decision, so a reader can redo the selection by hand."""

from __future__ import annotations

from pydantic import BaseModel, Field
from rich.console import Group
from rich.table import Table
from rich.text import Text

from cwm_agent.tts.options import TTSOptions
from cwm_agent.tts.regression import RegressionPlan


class CandidateReport(BaseModel):
    index: int
    status: str  # the rollout's status, or "failed" when its container or model broke
    reason: str | None = None
    turns: int = 0
    tokens: int = 0
    patch: str = ""
    applies: bool | None = None
    apply_error: str | None = None
    eligible: bool = False
    why_not: str | None = Field(None, description="why it cannot be selected")
    regression: dict[str, bool] = Field(default_factory=dict, description="test id -> passed")
    regression_s: float = Field(0.0, description="seconds of its regression run")
    regression_exit_code: int | None = None
    generated: dict[int, bool] = Field(default_factory=dict, description="kept test -> resolved")
    score: int | None = None
    key: str | None = Field(None, description="fingerprint of the normalised patch")
    votes: int = 0
    group_of_patch: list[int] = Field(default_factory=list, description="candidates voting alike")
    tested_as: int | None = Field(
        None, description="the candidate of its patch group that was tested; it shares the outcomes"
    )
    trajectory: str = ""


class GeneratedTestReport(BaseModel):
    index: int
    status: str
    reason: str | None = None
    kept: bool = False
    dropped_because: str | None = None
    original_output: str | None = None
    group: int | None = Field(None, description="rank of its behaviour group, 0 = largest")
    in_top_groups: bool = False
    duplicate_of: int | None = Field(
        None, description="the test of the same normalised source that ran for it"
    )
    trajectory: str = ""


class GroupReport(BaseModel):
    rank: int
    tests: list[int]
    resolved_by: list[int]


class TestingCost(BaseModel):
    """What testing took, for a budget: containers, test runs, interpreter starts."""

    containers: int = 0
    container_s: float = Field(0.0, description="seconds its containers were open, summed")
    test_executions: int = Field(0, description="regression commands and generated tests run")
    interpreter_starts: int = 0
    fallbacks: list[str] = Field(
        default_factory=list, description="why a batch of tests was rerun one test at a time"
    )


class TTSReport(BaseModel):
    version: int = 3
    options: TTSOptions
    candidates: list[CandidateReport]
    generated_tests: list[GeneratedTestReport]
    groups: list[GroupReport]
    regression: RegressionPlan
    start: str | None = Field(None, description="the start commit inside the containers")
    selected: int | None
    decision: str
    duration_s: float
    phases_s: dict[str, float] = Field(description="seconds from the start to each phase's end")
    testing: TestingCost = Field(default_factory=TestingCost)


def table(report: TTSReport) -> Group:
    """Candidates and what they scored, the selected one marked; then a warning
    line when no regression test could be used."""
    view = Table(title=f"candidates ({report.decision})", title_justify="left")
    for column in ("#", "status", "patch", "regression", "generated", "score", "votes", "tokens"):
        view.add_column(column, justify="left" if column in ("status", "patch") else "right")
    view.add_column("note", overflow="fold")
    for c in report.candidates:
        mark = "→" if c.index == report.selected else ""
        patch = "none" if not c.patch else ("applies" if c.applies else "does not apply")
        view.add_row(
            f"{mark}{c.index}",
            c.status,
            patch,
            f"{sum(c.regression.values())}/{len(c.regression)}" if c.eligible else "",
            f"{sum(c.generated.values())}/{len(c.generated)}" if c.eligible else "",
            "" if c.score is None else str(c.score),
            str(c.votes) if c.eligible else "",
            str(c.tokens),
            c.why_not or "",
        )
    warning = report.regression.warning()
    return Group(view, *([] if warning is None else [Text(warning, style="yellow")]))
