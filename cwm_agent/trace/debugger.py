"""`cwm-agent debug`: a neural debugger, in the spirit of the CWM release's demo.

Nothing runs: every step is CWM's prediction of the next frame. `step` goes into
calls, `next` predicts a call's return without stepping in, `out` runs to the
current function's return; `back` and `reset` move in the predicted history, `set`
edits a local of the current frame (the following steps are predicted from the
edited state) and `check` runs the real tracer to show where prediction and reality
part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from cwm_agent.trace.actual import ActualTrace
from cwm_agent.trace.format import End, Event, Frame, FrameError, resolve
from cwm_agent.trace.models import TraceModel
from cwm_agent.trace.predict import PredictLimits, TraceTask, next_frame
from cwm_agent.trace.view import matches, what, where

HELP = """commands:
  s, step          next frame, into calls
  n, next          next line, a call's return predicted without stepping in
  o, out           run to the current function's return
  b, back          undo the last step
  reset            back to the call
  p, locals [NAME] the current locals (all, or one)
  set NAME VALUE   edit a local (VALUE as its repr); later steps start from it
  check            run the real tracer and compare it with the frames so far
  q, quit"""


@dataclass
class Debugger:
    model: TraceModel
    task: TraceTask
    real: Callable[[], ActualTrace]  # the full real trace, run on demand
    limits: PredictLimits = field(default_factory=PredictLimits)
    frames: list[Frame] = field(default_factory=list)
    skipped: set[int] = field(default_factory=set)  # returns predicted without their body
    edited: int | None = None  # the first frame whose locals the user changed
    done: bool = False

    def __post_init__(self) -> None:
        self.reset()

    @property
    def current(self) -> Frame:
        return self.frames[-1]

    def reset(self) -> None:
        self.frames, self.skipped, self.edited, self.done = (
            list(self.task.given),
            set(),
            None,
            False,
        )

    def advance(self, event: Event | None = None) -> FrameError | None:
        """One predicted frame (its event forced when given); a malformed one is returned."""
        parsed = next_frame(self.model, self.task, self.frames, event, self.limits)
        if isinstance(parsed, FrameError):
            return parsed
        if isinstance(parsed, End):
            self.done = True
        else:
            self.frames.append(parsed)
        return None

    def step(self) -> FrameError | None:
        if self.done:
            return None
        return self.advance(Event.LINE if self.current.event == Event.CALL else None)

    def next(self) -> FrameError | None:
        error = self.step() if self.current.event == Event.CALL else self.advance_free()
        if error is None and not self.done and self.current.event == Event.CALL:
            error = self.skip_call() or self.advance_free()
        return error

    def out(self) -> FrameError | None:
        """To the frame after the current function's return; at a call, that function is
        the callee (as in the release's demo)."""
        if self.at_inner_call():
            return self.skip_call() or self.advance_free()
        while not self.done:
            error = self.skip_call() if self.at_inner_call() else self.advance_free()
            if error is not None:
                return error
            if self.current.event == Event.RETURN and len(self.frames) - 1 not in self.skipped:
                return self.advance_free()
        return None

    def advance_free(self) -> FrameError | None:
        return None if self.done else self.advance()

    def at_inner_call(self) -> bool:
        """At the call of a function entered from the trace (not the given entry call)."""
        called = len(self.frames) > len(self.task.given)
        return not self.done and called and self.current.event == Event.CALL

    def skip_call(self) -> FrameError | None:
        """Predict the current call's return without stepping through its body."""
        error = self.advance(Event.RETURN)
        if error is None:
            self.skipped.add(len(self.frames) - 1)
        return error

    def back(self) -> None:
        if len(self.frames) > len(self.task.given):
            self.skipped.discard(len(self.frames) - 1)
            self.frames.pop()
            self.done = False
            if self.edited is not None and self.edited >= len(self.frames):
                self.edited = None

    def set_local(self, name: str, value: str) -> str | None:
        """Edit a local of the current frame; the reason it cannot be, or None."""
        frame = self.current
        if not frame.has_locals:
            return "a return or exception frame has no locals to edit: step first"
        self.frames[-1] = Frame(
            frame.event, frame.line, {**(frame.locals or {}), name: value}, None, frame.lineno
        )
        self.edited = len(self.frames) - 1 if self.edited is None else self.edited
        self.done = False
        return None

    def aligned(self, actual: list[Frame]) -> list[tuple[int, int | None]]:
        """(predicted index, real index) pairs: a return predicted by `next` skips the
        real body of its call."""
        pairs: list[tuple[int, int | None]] = []
        at = 0
        for index in range(len(self.frames)):
            if index in self.skipped:
                depth = 0
                while at < len(actual) and not (actual[at].event == Event.RETURN and depth == 0):
                    depth += {Event.CALL: 1, Event.RETURN: -1}.get(actual[at].event, 0)
                    at += 1
            pairs.append((index, at if at < len(actual) else None))
            at += 1
        return pairs


def check_table(debugger: Debugger, actual: list[Frame]) -> tuple[Table, int | None]:
    table = Table(title="prediction vs reality", title_justify="left")
    for column in ("step", "predicted", "real", ""):
        table.add_column(column, overflow="fold")
    first = None
    for index, at in debugger.aligned(actual):
        frame = debugger.frames[index]
        real = actual[at] if at is not None else None
        same = real is not None and matches(frame, real)
        if not same and first is None:
            first = index
        cells = [f"{f.event} {where(f)}\n{what(f)}" if f else "(ended)" for f in (frame, real)]
        table.add_row(str(index), *cells, "" if same else "≠")
    return table, first


def show(console: Console, debugger: Debugger) -> None:
    if debugger.done:
        console.print("[bold]end of trace[/bold] (execution left the entry function)")
        return
    frame = debugger.current
    console.print(f"-> [{frame.event}] {where(frame)}", markup=False)
    detail = what(frame)
    if detail:
        console.print(f"   {detail}", markup=False)


def repl(debugger: Debugger, console: Console, read: Callable[[str], str] = input) -> None:
    """Read commands until `quit` or end of input."""
    console.print(debugger.task.marked_source, markup=False, highlight=False)
    show(console, debugger)
    while True:
        try:
            line = read(">> ").strip()
        except EOFError:
            return
        command, _, rest = line.partition(" ")
        moves: dict[str, Callable[[], FrameError | None]] = {
            "s": debugger.step,
            "step": debugger.step,
            "n": debugger.next,
            "next": debugger.next,
            "o": debugger.out,
            "out": debugger.out,
        }
        if command in moves:
            error = moves[command]()
            if error is not None:
                console.print(f"[red]malformed prediction[/red]: {error.reason}; try again or back")
            show(console, debugger)
        elif command in ("b", "back"):
            debugger.back()
            show(console, debugger)
        elif command == "reset":
            debugger.reset()
            show(console, debugger)
        elif command in ("p", "locals", "print"):
            shown = resolve(debugger.frames, len(debugger.frames) - 1)
            name = rest.strip()
            if not name:
                for key, value in shown.items():
                    console.print(f"{key} = {value}", markup=False)
            else:
                console.print(shown.get(name, f"no local {name!r}"), markup=False)
        elif command == "set":
            name, _, value = rest.strip().partition(" ")
            problem = "usage: set NAME VALUE" if not name or not value else None
            problem = problem or debugger.set_local(name, value.strip())
            console.print(problem or f"{name} = {value.strip()}", markup=False)
        elif command == "check":
            actual = debugger.real().frames
            table, first = check_table(debugger, actual)
            console.print(table)
            if first is None:
                console.print("prediction and reality agree so far")
            else:
                console.print(f"[bold red]first difference at step {first}[/bold red]")
            if debugger.edited is not None:
                console.print(
                    f"(locals edited at step {debugger.edited}: reality ran the original inputs)"
                )
        elif command in ("q", "quit", "exit"):
            return
        elif command in ("h", "help", "?", ""):
            console.print(HELP, markup=False)
        else:
            console.print(f"unknown command {command!r}; `help` lists them", markup=False)
