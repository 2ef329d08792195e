"""`cwm-agent swebench report DIR`: what a run did and, once graded, how well.

Reads only the run folder: `trajectories/*/result.json` (written by `run`)
and `report.json` (written by `eval`, if it has run).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError
from rich.console import Console
from rich.table import Table

from cwm_agent.agent import Usage
from cwm_agent.errors import first_line
from cwm_agent.swebench.errors import SwebenchError
from cwm_agent.swebench.evaluate import EvalReport
from cwm_agent.swebench.runner import InstanceResult

USAGE_LABELS = {  # Usage's fields, as the table names them
    "prompt_tokens": "prompt tokens",
    "completion_tokens": "completion tokens",
    "model_s": "model time (s)",
    "sandbox_s": "sandbox time (s)",
}
PART_LABELS = {
    "candidates": "candidate rollouts",
    "testgen": "test-generation rollouts",
    "tests": "test running",
}


class Spread(BaseModel):
    min: float
    median: float
    p90: float
    max: float


class Group(BaseModel):
    instances: int
    resolved: int | None  # None until graded


class Summary(BaseModel):
    instances: int
    submitted: int
    empty: int
    errors: int
    graded: int | None
    resolved: int | None
    resolved_rate: float | None
    # SWE-bench's own figure: of every instance run, an error counting as unresolved.
    resolved_of_all: int | None
    by_repo: dict[str, Group]
    by_difficulty: dict[str, Group]
    turns: Spread | None
    tokens: Spread | None
    wall_s: Spread | None
    # Cost: the sums over every instance, and per instance that ran, the spreads.
    usage: Usage
    prompt_tokens: Spread | None
    completion_tokens: Spread | None
    model_s: Spread | None
    sandbox_s: Spread | None
    usage_by_part: dict[str, Usage] | None = Field(
        description="test-time scaling: candidates, testgen and tests, summed over instances"
    )
    errors_by_kind: dict[str, int]


def summarize(folder: Path) -> Summary:
    return summary_of(read_results(folder), read_graded(folder))


def summary_of(results: list[InstanceResult], graded: EvalReport | None) -> Summary:
    ran = [r for r in results if r.status != "error"]
    by_repo: dict[str, list[InstanceResult]] = defaultdict(list)
    by_difficulty: dict[str, list[InstanceResult]] = defaultdict(list)
    for result in results:
        by_repo[result.repo or "(none)"].append(result)
        by_difficulty[result.difficulty or "(none)"].append(result)

    def group(members: list[InstanceResult]) -> Group:
        resolved = None
        if graded is not None:
            resolved = sum(_resolved(graded, m.instance_id) for m in members)
        return Group(instances=len(members), resolved=resolved)

    resolved = None if graded is None else graded.resolved
    by_repo_groups = {k: group(v) for k, v in sorted(by_repo.items())}
    return Summary(
        instances=len(results),
        submitted=sum(r.status == "submitted" for r in results),
        empty=sum(r.status == "empty" for r in results),
        errors=len(results) - len(ran),
        graded=None if graded is None else graded.total,
        resolved=resolved,
        resolved_rate=None if graded is None else graded.resolved_rate,
        resolved_of_all=(
            None if graded is None else sum(g.resolved or 0 for g in by_repo_groups.values())
        ),
        by_repo=by_repo_groups,
        by_difficulty={k: group(v) for k, v in sorted(by_difficulty.items())},
        turns=_spread([r.turns for r in ran]),
        tokens=_spread([r.tokens_used for r in ran]),
        wall_s=_spread([r.duration_s for r in ran]),
        usage=sum((r.usage for r in results), Usage()),
        **{key: _spread([getattr(r.usage, key) for r in ran]) for key in USAGE_LABELS},
        usage_by_part=_by_part([r.usage_by_part for r in results if r.usage_by_part]),
        errors_by_kind=dict(Counter(r.error or "?" for r in results if r.status == "error")),
    )


def render(summary: Summary, console: Console) -> None:
    if summary.resolved is not None and summary.graded:
        run = summary.resolved_of_all or 0
        console.print(
            f"resolved {summary.resolved}/{summary.graded} "
            f"({summary.resolved_rate:.1%}) of the graded predictions, "
            f"{run}/{summary.instances} ({run / max(summary.instances, 1):.1%}) "
            "of all instances run"
        )
    else:
        console.print("not graded yet: run `cwm-agent swebench eval` for resolved counts")
    console.print(
        f"{summary.instances} instance(s): {summary.submitted} submitted a patch, "
        f"{summary.empty} submitted none, {summary.errors} error(s)"
    )
    for title, groups in (("repo", summary.by_repo), ("difficulty", summary.by_difficulty)):
        table = Table(title, "instances", "resolved", "rate", title=f"by {title}")
        for name, found in groups.items():
            rate = "" if found.resolved is None else f"{found.resolved / found.instances:.1%}"
            resolved = "" if found.resolved is None else str(found.resolved)
            table.add_row(name, str(found.instances), resolved, rate)
        console.print(table)
    spreads = Table("per instance", "min", "median", "p90", "max", title="distributions")
    for name, spread in (
        ("turns", summary.turns),
        ("tokens", summary.tokens),
        ("wall time (s)", summary.wall_s),
    ):
        if spread is not None:
            values = (spread.min, spread.median, spread.p90, spread.max)
            spreads.add_row(name, *(f"{v:g}" for v in values))
    console.print(spreads)
    cost = Table("cost", "total", "min", "median", "p90", "max", title="tokens and time")
    for key, label in USAGE_LABELS.items():
        spread = getattr(summary, key)
        values = [] if spread is None else [spread.min, spread.median, spread.p90, spread.max]
        cost.add_row(label, *(f"{v:,.6g}" for v in (getattr(summary.usage, key), *values)))
    console.print(cost)
    if summary.usage_by_part:
        parts = Table("test-time scaling", *USAGE_LABELS.values(), title="cost by part (total)")
        for part, usage in summary.usage_by_part.items():
            cells = (f"{getattr(usage, key):,.6g}" for key in USAGE_LABELS)
            parts.add_row(PART_LABELS.get(part, part), *cells)
        console.print(parts)
    if summary.errors_by_kind:
        errors = Table("kind", "count", title="errors")
        for kind, count in sorted(summary.errors_by_kind.items()):
            errors.add_row(kind, str(count))
        console.print(errors)


def read_results(folder: Path) -> list[InstanceResult]:
    if not folder.is_dir():
        raise SwebenchError(f"{folder} is not a folder")
    results = []
    for path in sorted(folder.glob("trajectories/*/result.json")):
        try:
            results.append(InstanceResult.model_validate_json(path.read_text(encoding="utf-8")))
        except (OSError, ValidationError) as exc:
            raise SwebenchError(f"{path} is unreadable: {first_line(exc)}") from None
    if not results:
        raise SwebenchError(f"{folder} holds no finished instances (trajectories/*/result.json)")
    return results


def read_graded(folder: Path) -> EvalReport | None:
    path = folder / "report.json"
    if not path.is_file():
        return None
    try:
        return EvalReport.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise SwebenchError(f"{path} is unreadable: {first_line(exc)}") from None


def _resolved(report: EvalReport, instance_id: str) -> bool:
    found = report.instances.get(instance_id)
    return found is not None and found.status == "resolved"


def _by_part(splits: list[dict[str, Usage]]) -> dict[str, Usage] | None:
    """The scaled instances' splits summed part by part; None when none was scaled."""
    if not splits:
        return None
    return {part: sum((split[part] for split in splits), Usage()) for part in splits[0]}


def _spread(values: list[float]) -> Spread | None:
    if not values:
        return None
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return Spread(min=ordered[0], median=statistics.median(ordered), p90=p90, max=ordered[-1])
