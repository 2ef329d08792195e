"""Trace-prediction scores as in the CWM paper's Table 9 (CRUXEval-O by full trace).

Per trace: the format is valid (every predicted frame parsed and the trace ended with
`<|end_of_text|>`); state and action exact match over aligned frames (the i-th
predicted frame against the i-th real one, frames given in the prompt excluded: the
state is a call/line frame's locals or a return/exception frame's value, the action
its event and source line); output match (the entry function's predicted return
value equals the expected one, compared as Python values when both parse). A
dataset's figures are means over its traces.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from cwm_agent.trace.format import Event, Frame

# Table 9 of the CWM paper: CRUXEval-O by full trace prediction, greedy, in percent.
PAPER_TABLE_9 = {"valid": 99.6, "state": 96.9, "action": 96.5, "output": 88.0}


@dataclass(frozen=True)
class TraceScore:
    valid: bool
    aligned: int  # frame pairs compared
    state_matches: int
    action_matches: int
    output_match: bool
    first_divergence: int | None  # index (in the full trace) of the first differing frame

    @property
    def state(self) -> float:
        return self.state_matches / self.aligned if self.aligned else 0.0

    @property
    def action(self) -> float:
        return self.action_matches / self.aligned if self.aligned else 0.0

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "state": self.state, "action": self.action}


def same_state(a: Frame, b: Frame) -> bool:
    return (a.locals, a.value) == (b.locals, b.value)


def same_action(a: Frame, b: Frame) -> bool:
    return (a.event, a.line) == (b.event, b.line)


def entry_output(frames: Sequence[Frame]) -> str | None:
    """The value of the return that leaves the entry function (the first call)."""
    depth = 0
    for frame in frames:
        if frame.event == Event.CALL:
            depth += 1
        elif frame.event == Event.RETURN:
            depth -= 1
            if depth == 0:
                return frame.value
    return None


def same_value(predicted: str | None, expected: str | None) -> bool:
    """Equal as Python literals when both parse, else as text."""
    if predicted is None or expected is None:
        return False
    try:
        return bool(ast.literal_eval(predicted) == ast.literal_eval(expected))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return predicted.strip() == expected.strip()


def score_trace(
    predicted: Sequence[Frame],
    actual: Sequence[Frame],
    *,
    valid: bool,
    expected_output: str | None,
    given: int = 1,
) -> TraceScore:
    """Scores of `predicted` (the whole trace, its first `given` frames from the prompt)."""
    pairs = list(zip(predicted[given:], actual[given:], strict=False))
    states = [same_state(p, a) for p, a in pairs]
    actions = [same_action(p, a) for p, a in pairs]
    matches = [s and a for s, a in zip(states, actions, strict=True)]
    divergence = matches.index(False) if False in matches else None
    if divergence is None and len(predicted) != len(actual):
        divergence = len(pairs)
    return TraceScore(
        valid=valid,
        aligned=len(pairs),
        state_matches=sum(states),
        action_matches=sum(actions),
        output_match=same_value(entry_output(predicted), expected_output),
        first_divergence=None if divergence is None else divergence + given,
    )


def summarize(scores: Sequence[TraceScore]) -> dict[str, float]:
    """Dataset figures in percent: means over traces, as in Table 9."""
    if not scores:
        return {key: 0.0 for key in PAPER_TABLE_9}
    count = len(scores)
    return {
        "valid": 100 * sum(s.valid for s in scores) / count,
        "state": 100 * sum(s.state for s in scores) / count,
        "action": 100 * sum(s.action for s in scores) / count,
        "output": 100 * sum(s.output_match for s in scores) / count,
    }
