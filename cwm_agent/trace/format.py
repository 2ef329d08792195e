"""CWM's execution-trace format (docs/protocol.md §10): frames, their rendering, their parsing.

A prompt is `<|begin_of_text|><|trace_context_start|>SOURCE<|frame_sep|>` with the
entry function's `def` line marked `  # << START_OF_TRACE`, followed by the frames
known so far; each frame ends with `<|frame_sep|>` and the model writes
`<|end_of_text|>` once execution leaves the entry function. Trace tokens enter only as
special pieces, so source or values that spell one stay plain text. The model's
output comes back as pieces too (split at special-token ids, or at their spellings in
replayed text) and `parse_frame` turns one frame's pieces into a `Frame`, or a
`FrameError` saying what is malformed, never an exception.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cwm_agent import pyparse
from cwm_agent.errors import UserError
from cwm_agent.protocol.chat import BEGIN_OF_TEXT, END_OF_TEXT, Piece

FRAME_SEP = "<|frame_sep|>"
ACTION_SEP = "<|action_sep|>"
RETURN_SEP = "<|return_sep|>"
CALL_SEP = "<|call_sep|>"
LINE_SEP = "<|line_sep|>"
EXCEPTION_SEP = "<|exception_sep|>"
ARG_SEP = "<|arg_sep|>"
TRACE_CONTEXT_START = "<|trace_context_start|>"
START_MARKER = "  # << START_OF_TRACE"
UNCHANGED = ".."  # a local whose repr is the same as in the previous frame of its function


class Event(StrEnum):
    CALL = "call"
    LINE = "line"
    RETURN = "return"
    EXCEPTION = "exception"


EVENT_TOKENS = {
    Event.CALL: CALL_SEP,
    Event.LINE: LINE_SEP,
    Event.RETURN: RETURN_SEP,
    Event.EXCEPTION: EXCEPTION_SEP,
}
TOKEN_EVENTS = {token: event for event, token in EVENT_TOKENS.items()}
TRACE_TOKENS = (*EVENT_TOKENS.values(), FRAME_SEP, ACTION_SEP, ARG_SEP, TRACE_CONTEXT_START)
OUTPUT_TOKENS = (*TRACE_TOKENS, END_OF_TEXT, BEGIN_OF_TEXT)  # what a model may write
_TOKEN_SPELLING = re.compile("(" + "|".join(re.escape(t) for t in OUTPUT_TOKENS) + ")")


class TraceError(UserError):
    """A trace cannot be made (no such function, a bad call); the message is for users."""


@dataclass(frozen=True)
class Frame:
    """One step: call/line frames carry locals (reprs, `".."` when unchanged),
    return/exception frames a value (a repr). `lineno` is the tracer's, or the line's
    first occurrence in the source for a prediction (None when it is not there)."""

    event: Event
    line: str
    locals: dict[str, str] | None = None
    value: str | None = None
    lineno: int | None = None

    @property
    def has_locals(self) -> bool:
        return self.event in (Event.CALL, Event.LINE)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"event": str(self.event), "lineno": self.lineno, "line": self.line}
        data["locals" if self.has_locals else "value"] = (
            self.locals if self.has_locals else self.value
        )
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Frame:
        return cls(
            Event(data["event"]),
            data["line"],
            data.get("locals"),
            data.get("value"),
            data.get("lineno"),
        )


@dataclass(frozen=True)
class FrameError:
    """A predicted frame that does not follow the format: why, and what was written."""

    reason: str
    text: str


@dataclass(frozen=True)
class End:
    """`<|end_of_text|>`: the model says execution left the entry function."""


Parsed = Frame | FrameError | End


def mark_source(source: str, function: str) -> str:
    """`source` with the `def` line of top-level `function` marked as the trace's start."""
    try:
        tree = pyparse.parse(source)
    except SyntaxError as exc:
        raise TraceError(f"the source does not parse: {exc.msg} (line {exc.lineno})") from None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function:
            lines = source.splitlines(keepends=True)
            line = lines[node.lineno - 1]
            body = line.rstrip("\r\n")
            lines[node.lineno - 1] = body + START_MARKER + line[len(body) :]
            return "".join(lines)
    raise TraceError(f"no top-level function {function!r} in the source: check --function")


def special(token: str) -> Piece:
    return Piece(token, special=True)


def prompt_pieces(marked_source: str, frames: Iterable[Frame]) -> list[Piece]:
    """The trace prompt: context, then every frame known so far."""
    pieces = [special(BEGIN_OF_TEXT), special(TRACE_CONTEXT_START), Piece(marked_source)]
    pieces.append(special(FRAME_SEP))
    for frame in frames:
        pieces += frame_pieces(frame)
    return pieces


def frame_pieces(frame: Frame) -> list[Piece]:
    """One frame as CWM writes it, `<|frame_sep|>` included."""
    pieces = [special(EVENT_TOKENS[frame.event])]
    if frame.has_locals:
        pieces.append(Piece(json.dumps(frame.locals or {})))
    pieces += [special(ACTION_SEP), Piece(frame.line)]
    if not frame.has_locals:
        pieces += [special(ARG_SEP), Piece(json.dumps(frame.value))]
    return [*pieces, special(FRAME_SEP)]


def render_text(pieces: Sequence[Piece]) -> str:
    return "".join(piece.text for piece in pieces)


def split_text(text: str) -> list[Piece]:
    """Pieces of text that writes special tokens literally (replayed traces)."""
    parts = _TOKEN_SPELLING.split(text)  # the tokens are at odd indices
    return [Piece(part, special=index % 2 == 1) for index, part in enumerate(parts) if part]


def split_ids(ids: Sequence[int], tokenizer: Any) -> list[Piece]:
    """Pieces of generated ids: every special-token id is a token, the runs between
    them are decoded as plain text (text that spells a token stays text)."""
    specials = {tokenizer.convert_tokens_to_ids(t): t for t in OUTPUT_TOKENS}
    pieces: list[Piece] = []
    run: list[int] = []
    for token_id in [*ids, None]:
        if token_id is not None and token_id not in specials:
            run.append(token_id)
            continue
        if run:
            pieces.append(Piece(tokenizer.decode(run, skip_special_tokens=False)))
            run = []
        if token_id is not None:
            pieces.append(special(specials[token_id]))
    return pieces


def parse_frame(pieces: Sequence[Piece], source_lines: Sequence[str] = ()) -> Parsed:
    """One frame's pieces (from its event token up to, not including, `<|frame_sep|>`)."""
    text = render_text(pieces)
    if not pieces:
        return FrameError("empty frame", text)
    head = pieces[0]
    if head.special and head.text == END_OF_TEXT:
        return End() if len(pieces) == 1 else FrameError("text after <|end_of_text|>", text)
    if not head.special or head.text not in TOKEN_EVENTS:
        return FrameError("the frame does not start with an event token", text)
    event = TOKEN_EVENTS[head.text]
    has_locals = event in (Event.CALL, Event.LINE)
    fields, separators = _fields(pieces[1:])
    expected = [ACTION_SEP] if has_locals else [ACTION_SEP, ARG_SEP]
    if separators != expected:
        got = ", ".join(separators) or "none"
        return FrameError(f"a {event} frame needs {' then '.join(expected)}, got {got}", text)
    if has_locals:
        locals_ = _locals(fields[0])
        if locals_ is None:
            return FrameError("the locals are not a JSON object of strings", text)
        line, value = fields[1], None
    else:
        if fields[0]:
            return FrameError(f"text before <|action_sep|> in a {event} frame", text)
        line, value, locals_ = fields[1], _json_string(fields[2]), None
        if value is None:
            return FrameError(f"the {event} value is not a JSON string", text)
    return Frame(event, line, locals_, value, lookup_line(line, source_lines))


def _fields(pieces: Sequence[Piece]) -> tuple[list[str], list[str]]:
    """Text between separators, and the separators in order."""
    fields, separators = [""], []
    for piece in pieces:
        if piece.special:
            separators.append(piece.text)
            fields.append("")
        else:
            fields[-1] += piece.text
    return fields, separators


def _locals(text: str) -> dict[str, str] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return value
    return None


def _json_string(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def lookup_line(line: str, source_lines: Sequence[str]) -> int | None:
    """1-based number of the first source line equal to `line` (the start marker aside)."""
    wanted = line.rstrip("\n").removesuffix(START_MARKER)
    for number, candidate in enumerate(source_lines, 1):
        if candidate.removesuffix(START_MARKER) == wanted:
            return number
    return None


def resolve(frames: Sequence[Frame], index: int) -> dict[str, str]:
    """Full locals at frame `index`: each `".."` replaced by its last value, looking back
    through the same function's frames until its call or another function's return."""
    at = index
    while at > 0 and not frames[at].has_locals:
        at -= 1  # return/exception frames show the locals of the frame before
    shown = dict(frames[at].locals or {})
    for name, value in shown.items():
        back = at - 1
        while value == UNCHANGED and back >= 0 and frames[back].event != Event.RETURN:
            value = (frames[back].locals or {}).get(name, UNCHANGED)
            if frames[back].event == Event.CALL:
                break
            back -= 1
        shown[name] = value
    return shown


def changed(frame: Frame) -> dict[str, str]:
    """The locals a frame shows as new or changed."""
    return {k: v for k, v in (frame.locals or {}).items() if v != UNCHANGED}
