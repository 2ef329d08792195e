"""What each page shows, worked out from the records: turns of a rollout, the
candidates x tests matrix of a test-time scaling run, the rows of a batch."""

from __future__ import annotations

from dataclasses import dataclass, field

from cwm_agent.agent.trajectory import MessageRecord, ToolCallRecord, ToolResultRecord, Trajectory
from cwm_agent.swebench.report import Summary, summary_of
from cwm_agent.swebench.runner import InstanceResult
from cwm_agent.tools.bash import FAILURE_MESSAGES
from cwm_agent.tts import TTSReport
from cwm_agent.view import plots
from cwm_agent.view.runs import BatchRun

FOLD_LINES = 30  # longer tool outputs are folded, their first lines shown
_RESTARTS = {message: why for why, message in FAILURE_MESSAGES.items()}


@dataclass
class Turn:
    """One assistant reply and what answered it."""

    number: int
    reasoning: str
    answer: str  # the visible reply around the tool call (the summary, on a final turn)
    tool: ToolCallRecord | None = None
    result: ToolResultRecord | None = None
    budget: str = ""
    format_error: str | None = None
    generation_s: float | None = None
    tokens: int = 0  # tokens in the context after this turn
    restarted: str | None = None  # why bash restarted its shell: timeout, output, terminated

    @property
    def folded(self) -> bool:
        return self.result is not None and self.result.output.count("\n") >= FOLD_LINES

    @property
    def head(self) -> str:
        """The first lines of a folded output."""
        return "\n".join(self.result.output.splitlines()[:8]) if self.result else ""

    @property
    def kind(self) -> str:
        if self.format_error is not None:
            return "format-error"
        if self.tool is None:
            return "final"
        return "failed" if self.result is not None and not self.result.ok else "ok"


def turns(trajectory: Trajectory) -> list[Turn]:
    found: list[Turn] = []
    # The rollout's own count: the prompt (not recorded alone), then what each message added.
    used = trajectory.tokens_used - sum(m.tokens or 0 for m in trajectory.messages)
    for message in trajectory.messages:
        used += message.tokens or 0
        if message.role == "assistant":
            found.append(_reply(message))
        elif found and message.tool_result is not None:
            found[-1].result = message.tool_result
            found[-1].budget = _budget(message.content)
            found[-1].restarted = _RESTARTS.get(message.tool_result.output)
        if found:
            found[-1].tokens = used
    return found


def _budget(content: str) -> str:
    """The budget notice after a tool's output, as one line ("Remaining turns: 3 · ...")."""
    notice = content.rpartition("</output>")[2]
    return " · ".join(line.lstrip("* ") for line in notice.splitlines() if line.startswith("*"))


def _reply(message: MessageRecord) -> Turn:
    reasoning, _, answer = message.content.partition("</think>")
    if message.tool_call is not None:
        answer = answer.partition("<tool:")[0]
    return Turn(
        number=message.turn,
        reasoning=reasoning.strip(),
        answer=answer.strip(),
        tool=message.tool_call,
        format_error=message.format_error,
        generation_s=message.duration_s,
    )


def prompt(trajectory: Trajectory) -> str:
    """The task as the model was given it (the first user message)."""
    return next((m.content for m in trajectory.messages if m.role == "user"), trajectory.issue)


def token_chart(trajectory: Trajectory, shown: list[Turn], prefix: str = "") -> plots.Chart:
    """Tokens in the context after each turn; turns that went wrong are marked."""
    limit = trajectory.config.get("context_size")
    return plots.running(
        "tokens used so far",
        [t.tokens for t in shown],
        limit if isinstance(limit, int) else None,
        kinds=[t.kind if t.kind in ("failed", "format-error") else "" for t in shown],
        links=[f"#{prefix}turn-{t.number}" for t in shown],
    )


@dataclass
class Cell:
    passed: bool | None  # None: not run on this candidate
    top: bool = False  # a top-5 majority test


@dataclass
class Matrix:
    """Candidates (rows) x tests (columns): regression tests, then kept generated tests."""

    columns: list[tuple[str, str, bool]] = field(default_factory=list)  # (key, name, top-5)
    rows: list[tuple[int, list[Cell]]] = field(default_factory=list)

    @property
    def regression(self) -> int:
        """How many of the columns, from the left, are regression tests."""
        return sum(key.startswith("r:") for key, _, _ in self.columns)


def matrix(report: TTSReport) -> Matrix:
    regression = sorted({t for c in report.candidates for t in c.regression})
    kept = [t for t in report.generated_tests if t.kept]
    table = Matrix(
        columns=[(f"r:{name}", _short(name), False) for name in regression]
        + [(f"g:{t.index}", f"generated test {t.index}", t.in_top_groups) for t in kept]
    )
    for c in report.candidates:
        cells = [Cell(c.regression.get(name)) for name in regression]
        cells += [Cell(c.generated.get(t.index), t.in_top_groups) for t in kept]
        table.rows.append((c.index, cells))
    return table


def notes(report: TTSReport) -> dict[str, str]:
    """What became of each rollout, for the top of its trajectory: "candidate-2": "score 3"."""
    found = {}
    for c in report.candidates:
        score = "" if c.score is None else f"score {c.score}"
        verdict = "selected" if c.index == report.selected else c.why_not or "outranked"
        found[f"candidate-{c.index}"] = ", ".join(part for part in (score, verdict) if part)
    for t in report.generated_tests:
        kept = f"kept, behaviour group {t.group}" if t.kept else f"dropped: {t.dropped_because}"
        found[f"testgen-{t.index}"] = kept
    return found


def _short(test: str) -> str:
    """A test's own name, without its module and class (`test_x (mod.Class.test_x)` too)."""
    name = test.split(" (")[0]
    return name.replace("::", ".").rsplit(".", 1)[-1]


@dataclass
class Row:
    result: InstanceResult
    outcome: str  # resolved, unresolved, empty or error; submitted until graded
    has_page: bool  # it left a trajectory (an instance that failed to start did not)

    @property
    def worker(self) -> str:
        return self.result.worker or ""


def rows(batch: BatchRun) -> list[Row]:
    graded = batch.graded
    found = []
    for result in batch.results.values():
        outcome: str = result.status
        if result.status == "submitted" and graded is not None:
            report = graded.instances.get(result.instance_id)
            outcome = report.status if report is not None else "submitted"
        if outcome == "empty_patch":
            outcome = "empty"
        folder = batch.instance_folder(result.instance_id)
        has_page = folder is not None and (folder / "trajectory.json").is_file()
        found.append(Row(result, outcome, has_page))
    return found


def summary(batch: BatchRun) -> Summary:
    """What `swebench report` prints, of this batch."""
    return summary_of(list(batch.results.values()), batch.graded)


def batch_charts(batch: BatchRun, summary: Summary) -> list[plots.Chart]:
    """`summary` drawn: resolved rate by repo and by difficulty (once graded), the turns,
    tokens and wall-time distributions, errors by kind."""
    results = list(batch.results.values())
    charts = []
    for title, groups in (
        ("resolved by repo", summary.by_repo),
        ("resolved by difficulty", summary.by_difficulty),
    ):
        rates = [
            (name, g.resolved, g.instances) for name, g in groups.items() if g.resolved is not None
        ]
        if rates:
            charts.append(plots.rates(title, rates))
    ran = [r for r in results if r.status != "error"]
    charts.append(plots.histogram("turns", [r.turns for r in ran]))
    charts.append(plots.histogram("tokens", [r.tokens_used for r in ran]))
    charts.append(plots.histogram("wall time", [r.duration_s for r in ran], " s"))
    if summary.errors_by_kind:
        charts.append(plots.counts("errors by kind", sorted(summary.errors_by_kind.items())))
    return charts
