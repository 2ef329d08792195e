"""The world-model commands: `trace`, `debug` and `eval cruxeval`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cwm_agent import flags
from cwm_agent.model import DEFAULT_MODEL, LoadConfig, ModelSpec, SamplingConfig, loading_line
from cwm_agent.terminal import make_console
from cwm_agent.trace.actual import ActualTrace, TraceJob, TracerLimits, run_tracer
from cwm_agent.trace.cruxeval import EvalSettings, run_cruxeval
from cwm_agent.trace.debugger import Debugger, repl
from cwm_agent.trace.format import TraceError, mark_source
from cwm_agent.trace.models import TraceModel, load_trace_model
from cwm_agent.trace.predict import PredictLimits, TraceTask, predict_traces
from cwm_agent.trace.scoring import score_trace, summarize
from cwm_agent.trace.view import compare_table, scores_table, trace_table

console = make_console()
TRACER, PREDICT = TracerLimits(), PredictLimits()  # the defaults flags show

File = Annotated[Path, typer.Argument(help="Python file holding the function")]
Function = Annotated[str, typer.Option(help="entry function (top level in FILE)")]
Args = Annotated[str, typer.Option(help="call arguments in Python syntax, e.g. '[1, 2], k=3'")]
Tokenizer = Annotated[
    str | None, typer.Option(help="openai: the tokenizer to encode prompts with (Hub id or dir)")
]
Image = Annotated[str, typer.Option(help="sandbox image the real tracer runs in (Python 3.8+)")]
Timeout = Annotated[float, typer.Option(help="seconds one real trace may run")]
MaxFrameTokens = Annotated[int, typer.Option(min=1, help="tokens one predicted frame may have")]
Sample = Annotated[
    bool, typer.Option("--sample", help="sample (temperature 0.6, top-p 0.95), not greedy")
]


SEED = flags.SAMPLING.pick("seed")
LOAD = flags.LOAD.pick("dtype", "quantization", "device_map", "offline")


@dataclass(frozen=True)
class Predictor:
    """How every world-model command loads its model and bounds its traces."""

    sampling: SamplingConfig
    tokenizer: str | None
    tracer: TracerLimits
    budget: PredictLimits
    load: LoadConfig

    def model(self, spec: str, sample: bool) -> TraceModel:
        """The trace model `spec` names: greedy unless `sample`."""
        parsed = ModelSpec.parse(spec, self.load, self.sampling)
        if loading := loading_line(parsed):  # on stderr: --json output stays JSON alone
            typer.echo(loading, err=True)
        return load_trace_model(parsed, sample=sample, tokenizer=self.tokenizer)


@flags.expand
def predictor(
    sampling: SamplingConfig = flags.group(SEED),
    tokenizer: Tokenizer = None,
    image: Image = TRACER.image,
    timeout: Timeout = TRACER.timeout_s,
    max_frame_tokens: MaxFrameTokens = PREDICT.max_frame_tokens,
    load: LoadConfig = flags.group(LOAD),
) -> Predictor:
    """The flags every world-model command shares, after its own."""
    return Predictor(
        sampling,
        tokenizer,
        TracerLimits(image=image, timeout_s=timeout),
        PredictLimits(max_frame_tokens=max_frame_tokens),
        load,
    )


def _read(file: Path, function: str) -> str:
    try:
        source = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"cannot read {file}: {exc}") from None
    mark_source(source, function)  # fails now on a missing function
    return source


def real_trace(
    source: str, function: str, args: str, limits: TracerLimits, full: bool
) -> ActualTrace:
    """The real trace (just its call frame unless `full`); a failed call is the user's error."""
    (trace,) = run_tracer([TraceJob(source, function, args)], limits, max_frames=0 if full else 1)
    if not trace.frames:
        why = trace.error or trace.raised or trace.status
        raise TraceError(f"cannot trace {function}({args}): {why}")
    return trace


def register(app: typer.Typer) -> None:
    """Add `trace`, `debug` and `eval cruxeval` to the main CLI."""
    app.command()(trace)
    app.command()(debug)
    eval_app = typer.Typer(help="Benchmarks of CWM as a world model.")
    eval_app.command()(cruxeval)
    app.add_typer(eval_app, name="eval")


@flags.expand
def trace(
    file: File,
    function: Function,
    args: Args = "",
    model: flags.Model = DEFAULT_MODEL,
    actual: Annotated[bool, typer.Option("--actual", help="the real trace only")] = False,
    compare: Annotated[
        bool, typer.Option("--compare", help="predicted and real side by side, with scores")
    ] = False,
    json_: Annotated[bool, typer.Option("--json", help="print JSON, not tables")] = False,
    sample: Sample = False,
    how: Predictor = flags.group(predictor),
) -> None:
    """Predict how FUNCTION(ARGS) runs, line by line; --actual runs it for real."""
    source = _read(file, function)
    predicting = how.model(model, sample) if compare or not actual else None
    real = real_trace(source, function, args, how.tracer, full=actual or compare)
    result: dict[str, object] = {"function": function, "args": args}
    if predicting is not None:
        task = TraceTask("trace", source, function, (real.frames[0],))
        (prediction,) = predict_traces(predicting, [task], how.budget)
        result["predicted"] = prediction.to_json()
    if actual or compare:
        result["actual"] = real.to_json()
    if compare:
        score = score_trace(
            prediction.frames, real.frames, valid=prediction.valid, expected_output=real.output
        )
        result["scores"] = score.to_json()
    if json_:
        typer.echo(json.dumps(result, indent=2))
        return
    if predicting is not None and not compare:
        console.print(
            trace_table(prediction.frames, f"predicted ({predicting.name})", prediction.error)
        )
    if actual and not compare:
        console.print(trace_table(real.frames, f"actual ({real.status})"))
    if compare:
        console.print(compare_table(prediction.frames, real.frames, score))
        if prediction.error is not None:
            console.print(f"[red]malformed frame:[/red] {escape(prediction.error.reason)}")
        if not real.complete:
            console.print(
                f"the real trace is incomplete ({real.status}): compared as far as it goes"
            )
        console.print(scores_table(summarize([score]), paper=False))


@flags.expand
def debug(
    file: File,
    function: Function,
    args: Args = "",
    model: flags.Model = DEFAULT_MODEL,
    greedy: flags.Greedy = False,
    how: Predictor = flags.group(predictor),
) -> None:
    """A neural debugger: step through CWM's prediction of FUNCTION(ARGS) (`help` inside)."""
    source = _read(file, function)
    predicting = how.model(model, not greedy)
    call = real_trace(source, function, args, how.tracer, full=False).frames[0]
    full: list[ActualTrace] = []

    def reality() -> ActualTrace:
        if not full:
            full.append(real_trace(source, function, args, how.tracer, full=True))
        return full[0]

    task = TraceTask("trace", source, function, (call,))
    repl(Debugger(predicting, task, reality, how.budget), console)


@flags.expand
def cruxeval(
    data: Annotated[
        Path,
        typer.Option(help="cruxeval.jsonl (facebookresearch/cruxeval data/cruxeval.jsonl)"),
    ],
    model: flags.Model = DEFAULT_MODEL,
    output: Annotated[Path | None, typer.Option(help="run folder: new, or one to resume")] = None,
    limit: Annotated[int | None, typer.Option(help="only the first N rows")] = None,
    workers: Annotated[int, typer.Option(min=1, help="traces decoded at once")] = 8,
    sample: Sample = False,
    how: Predictor = flags.group(predictor),
) -> None:
    """CRUXEval-O by full trace prediction, with the CWM paper's figures beside ours."""
    predicting = how.model(model, sample)
    folder = output or Path("cwm-agent-runs") / time.strftime("cruxeval-%Y%m%d-%H%M%S")
    settings = EvalSettings(data, folder, limit, workers, sample, how.sampling.seed)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as bar:
        tasks: dict[str, int] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done)

        summary = run_cruxeval(predicting, settings, how.tracer, how.budget, progress)
    title = f"CRUXEval-O, {summary['rows']} rows, {predicting.name}"
    console.print(scores_table(summary["figures"], paper=True, title=title))
    console.print(
        f"malformed traces: {summary['malformed']}; rows whose real trace is incomplete: "
        f"{summary['untraced']}; outputs: {folder}/"
    )
