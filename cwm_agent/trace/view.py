"""Traces as terminal tables: one trace, two side by side, and the scores beside the paper's."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from cwm_agent.trace.format import Frame, FrameError, changed
from cwm_agent.trace.scoring import PAPER_TABLE_9, TraceScore, same_action, same_state

_NAMES = {
    "valid": "valid trace format",
    "state": "state exact match",
    "action": "action exact match",
}
_NAMES["output"] = "output match (pass@1)"
CELL_CHARS = 2000  # a table lays out every character it gets: longer text is cut first


def _cell(text: str) -> str:
    """`text`, cut to CELL_CHARS with a note of what was left out."""
    if len(text) <= CELL_CHARS:
        return text
    return f"{text[:CELL_CHARS]}… ({len(text) - CELL_CHARS:,} more characters: --json has all)"


def where(frame: Frame) -> str:
    number = "?" if frame.lineno is None else str(frame.lineno)
    return _cell(f"{number:>3} {frame.line.strip()}")


def what(frame: Frame) -> str:
    """The locals a frame changes, or the value it returns or raises (cut to a cell)."""
    if frame.has_locals:
        return _cell(", ".join(f"{k}={v}" for k, v in changed(frame).items()))
    return _cell(f"{'->' if frame.event == 'return' else 'raises'} {frame.value}")


def matches(predicted: Frame, actual: Frame) -> bool:
    return same_state(predicted, actual) and same_action(predicted, actual)


def trace_table(frames: Sequence[Frame], title: str, error: FrameError | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("step", "event", "line", "locals changed / value"):
        table.add_column(column, overflow="fold")
    for step, frame in enumerate(frames):
        table.add_row(str(step), str(frame.event), where(frame), what(frame))
    if error is not None:
        table.add_row(str(len(frames)), "malformed", error.reason, error.text[:200], style="red")
    return table


def compare_table(predicted: Sequence[Frame], actual: Sequence[Frame], score: TraceScore) -> Table:
    """Predicted and real frames side by side; rows that differ are marked, the first
    divergence in bold."""
    table = Table(title="predicted vs actual", title_justify="left")
    for column in ("step", "predicted", "actual", ""):
        table.add_column(column, overflow="fold")
    for step in range(max(len(predicted), len(actual))):
        cells = []
        for frames in (predicted, actual):
            frame = frames[step] if step < len(frames) else None
            cells.append("" if frame is None else f"{frame.event} {where(frame)}\n{what(frame)}")
        same = step < min(len(predicted), len(actual)) and matches(predicted[step], actual[step])
        mark = Text("") if same else Text("≠", style="red")
        if step == score.first_divergence:
            mark = Text("≠ first divergence", style="bold red")
        table.add_row(str(step), *cells, mark)
    return table


def scores_table(ours: dict[str, float], paper: bool, title: str = "scores") -> Table:
    """Our figures (percent), with the CWM paper's Table 9 beside them when `paper`."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("ours", justify="right")
    if paper:
        table.add_column("CWM paper (Table 9, greedy)", justify="right")
    for key, name in _NAMES.items():
        row = [name, f"{ours[key]:.1f}%"]
        table.add_row(*row, *([f"{PAPER_TABLE_9[key]:.1f}%"] if paper else []))
    return table
