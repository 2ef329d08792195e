"""CRUXEval-O by full trace prediction (the CWM paper's Table 9).

Each row's `f` is traced for real in the sandbox (its call frame is the prompt's
last frame, the rest is ground truth), the model predicts the trace after it, and
the scores compare the two; the output counts as correct when the predicted return
value equals the row's expected `output`. The output folder keeps everything needed
to resume: `run.json` (model and settings), `actual.jsonl` (real traces),
`predictions.jsonl` (one line per finished row, written as each ends) and, at the
end, `summary.json`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cwm_agent.atomic_write import append_line, write_json
from cwm_agent.trace.actual import ActualTrace, TraceJob, TracerLimits, run_tracer
from cwm_agent.trace.format import TraceError
from cwm_agent.trace.models import TraceModel
from cwm_agent.trace.predict import Prediction, PredictLimits, TraceTask, predict_traces
from cwm_agent.trace.scoring import TraceScore, entry_output, score_trace, summarize

FUNCTION = "f"  # every CRUXEval row defines `f`
Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class Row:
    id: str
    code: str
    input: str
    output: str


@dataclass(frozen=True)
class EvalSettings:
    data: Path
    output: Path
    limit: int | None = None
    workers: int = 8  # traces decoded at once
    sample: bool = False
    seed: int | None = None


def load_rows(path: Path, limit: int | None) -> list[Row]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"cannot read the CRUXEval data {path}: {exc}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            data = json.loads(line)
            rows.append(Row(data["id"], data["code"], data["input"], data["output"]))
        except (ValueError, KeyError, TypeError):
            raise TraceError(
                f"{path} line {number} is not a CRUXEval row (JSON with id, code, input, output)"
            ) from None
    return rows[:limit] if limit is not None else rows


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The complete lines of a JSONL file; a line cut by an interrupt is skipped."""
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            yield json.loads(line)
        except ValueError:
            continue


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    append_line(path, json.dumps(record))


def check_run(folder: Path, run: dict[str, Any]) -> None:
    """A folder holds one run: resuming with another model or settings is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.json"
    if path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != run:
            raise TraceError(
                f"{folder} holds a run of {before.get('model')} with other settings: "
                "resume it with the same --model and flags, or use a new --output"
            )
    else:
        write_json(path, run)


def actual_traces(
    rows: list[Row], folder: Path, limits: TracerLimits, progress: Progress
) -> dict[str, ActualTrace]:
    """Real traces of `rows`, from `actual.jsonl` or made now (and saved there)."""
    path = folder / "actual.jsonl"
    known = {r["id"]: ActualTrace.from_json(r["trace"]) for r in read_jsonl(path)}
    missing = [row for row in rows if row.id not in known]
    done = len(rows) - len(missing)
    progress("tracing", done, len(rows))
    chunk = 50
    for start in range(0, len(missing), chunk):
        batch = missing[start : start + chunk]
        jobs = [TraceJob(row.code, FUNCTION, row.input) for row in batch]
        for row, trace in zip(batch, run_tracer(jobs, limits, chunk=chunk), strict=True):
            known[row.id] = trace
            append_jsonl(path, {"id": row.id, "trace": trace.to_json()})
        done += len(batch)
        progress("tracing", done, len(rows))
    return known


def record(row: Row, actual: ActualTrace, prediction: Prediction) -> dict[str, Any]:
    score = score_trace(
        prediction.frames, actual.frames, valid=prediction.valid, expected_output=row.output
    )
    return {
        "id": row.id,
        "input": row.input,
        "expected": row.output,
        "predicted_output": entry_output(prediction.frames),
        "actual_status": actual.status,
        "scores": score.to_json(),
        "prediction": prediction.to_json(),
    }


def score_of(line: dict[str, Any]) -> TraceScore:
    names = {f.name for f in fields(TraceScore)}
    return TraceScore(**{k: v for k, v in line["scores"].items() if k in names})


def run_cruxeval(
    model: TraceModel,
    settings: EvalSettings,
    tracer: TracerLimits,
    limits: PredictLimits,
    progress: Progress,
) -> dict[str, Any]:
    """Trace, predict and score every row not yet in the folder; the summary of all."""
    rows = load_rows(settings.data, settings.limit)
    run = {"model": model.name, "sample": settings.sample, "seed": settings.seed}
    check_run(settings.output, run)
    actual = actual_traces(rows, settings.output, tracer, progress)
    path = settings.output / "predictions.jsonl"
    finished = {line["id"] for line in read_jsonl(path)}
    pending = [row for row in rows if row.id not in finished]
    untraced = [row for row in pending if not actual[row.id].frames]
    for row in untraced:  # no call frame to start from: the row counts as failed
        append_jsonl(path, record(row, actual[row.id], Prediction([], 0)))
    pending = [row for row in pending if actual[row.id].frames]
    done = len(rows) - len(pending)
    progress("predicting", done, len(rows))
    for start in range(0, len(pending), settings.workers):
        batch = pending[start : start + settings.workers]
        tasks = [TraceTask(r.id, r.code, FUNCTION, (actual[r.id].frames[0],)) for r in batch]

        def save(index: int, prediction: Prediction, batch: list[Row] = batch) -> None:
            nonlocal done
            row = batch[index]
            append_jsonl(path, record(row, actual[row.id], prediction))
            done += 1
            progress("predicting", done, len(rows))

        predict_traces(model, tasks, limits, on_done=save)
    selected = {row.id for row in rows}
    lines = [line for line in read_jsonl(path) if line["id"] in selected]
    figures = summarize([score_of(line) for line in lines])
    malformed = sum(line["prediction"]["error"] is not None for line in lines)
    summary = {**run, "rows": len(lines), "malformed": malformed, "figures": figures}
    summary["untraced"] = sum(not actual[row.id].complete for row in rows)
    write_json(settings.output / "summary.json", summary)
    return summary
