"""Trace prediction: the model continues a trace prompt one frame at a time.

Every step sends the whole prompt (context and the frames so far; a local model
reuses its KV cache for the common prefix) and stops at `<|frame_sep|>`; the frame is
parsed, and decoding of that trace ends at `<|end_of_text|>`, at the first malformed
frame or at the frame limit. Several traces advance in lockstep, one batch per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from cwm_agent.protocol.chat import END_OF_TEXT, Piece
from cwm_agent.trace.format import (
    EVENT_TOKENS,
    FRAME_SEP,
    End,
    Event,
    Frame,
    FrameError,
    Parsed,
    mark_source,
    parse_frame,
    prompt_pieces,
    render_text,
    special,
)
from cwm_agent.trace.models import FrameRequest, TraceModel


@dataclass(frozen=True)
class PredictLimits:
    max_frames: int = 10_001  # the tracer's cap of 10k line events, plus the call
    max_frame_tokens: int = 2048  # per frame, as in the release's demo


@dataclass(frozen=True)
class TraceTask:
    """A trace to predict: `function` of `source`, from the frames `given` (the call)."""

    key: str
    source: str
    function: str
    given: tuple[Frame, ...]

    @cached_property
    def marked_source(self) -> str:
        return mark_source(self.source, self.function)


@dataclass
class Prediction:
    """The given frames then the predicted ones; valid when it ended with
    `<|end_of_text|>` and no frame was malformed."""

    frames: list[Frame]
    given: int
    ended: bool = False
    error: FrameError | None = None
    cut: bool = False  # stopped at PredictLimits.max_frames

    @property
    def valid(self) -> bool:
        return self.ended and self.error is None

    def to_json(self) -> dict[str, object]:
        return {
            "frames": [frame.to_json() for frame in self.frames],
            "given": self.given,
            "ended": self.ended,
            "valid": self.valid,
            "cut": self.cut,
            "error": None if self.error is None else vars(self.error),
        }


def frame_request(task: TraceTask, frames: Sequence[Frame], event: Event | None) -> FrameRequest:
    """The prompt for the frame after `frames`; `event` forces its event token."""
    prompt = prompt_pieces(task.marked_source, frames)
    if event is not None:
        prompt.append(special(EVENT_TOKENS[event]))
    return FrameRequest(task.key, prompt)


def parse_reply(
    reply: Sequence[Piece], source: str, event: Event | None, limits: PredictLimits
) -> Parsed:
    """One continuation as a frame: its stop token dropped, a forced event token put back."""
    pieces = [special(EVENT_TOKENS[event]), *reply] if event is not None else list(reply)
    last = pieces[-1] if pieces else None
    if last is not None and last.special and last.text == FRAME_SEP:
        pieces = pieces[:-1]
    elif last is None or not (last.special and last.text == END_OF_TEXT):
        cut = f"no <|frame_sep|> within {limits.max_frame_tokens} tokens"
        return FrameError(cut, render_text(pieces))
    return parse_frame(pieces, source.splitlines())


def next_frame(
    model: TraceModel,
    task: TraceTask,
    frames: Sequence[Frame],
    event: Event | None = None,
    limits: PredictLimits = PredictLimits(),
) -> Parsed:
    """One predicted step after `frames` (the debugger's unit of work)."""
    (reply,) = model.continue_frames([frame_request(task, frames, event)], limits.max_frame_tokens)
    return parse_reply(reply, task.source, event, limits)


def predict_traces(
    model: TraceModel,
    tasks: Sequence[TraceTask],
    limits: PredictLimits = PredictLimits(),
    on_done: Callable[[int, Prediction], None] | None = None,
) -> list[Prediction]:
    """Whole traces for `tasks`, advanced together; `on_done(index, prediction)` as each ends."""
    predictions = [Prediction(list(task.given), len(task.given)) for task in tasks]
    active = list(range(len(tasks)))
    while active:
        requests = [frame_request(tasks[i], predictions[i].frames, None) for i in active]
        replies = model.continue_frames(requests, limits.max_frame_tokens)
        still = []
        for index, reply in zip(active, replies, strict=True):
            prediction = predictions[index]
            parsed = parse_reply(reply, tasks[index].source, None, limits)
            if isinstance(parsed, Frame):
                prediction.frames.append(parsed)
                prediction.cut = len(prediction.frames) >= limits.max_frames
            elif isinstance(parsed, End):
                prediction.ended = True
            else:
                prediction.error = parsed
            if isinstance(parsed, Frame) and not prediction.cut:
                still.append(index)
            elif on_done is not None:
                on_done(index, prediction)
        active = still
    return predictions
