"""The `cwm-agent swebench` commands: run, eval, report, bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cwm_agent import flags
from cwm_agent.agent import RolloutConfig
from cwm_agent.model import LoadConfig, ModelSpec, SamplingConfig, loading_line
from cwm_agent.swebench import cluster
from cwm_agent.swebench.bundle import bundle as write_bundle
from cwm_agent.swebench.dataset import load_instances, read_ids
from cwm_agent.swebench.errors import SwebenchError
from cwm_agent.swebench.evaluate import InstanceReport, evaluate
from cwm_agent.swebench.predictions import read_predictions
from cwm_agent.swebench.report import render, summarize
from cwm_agent.swebench.runner import InstanceResult, RunOptions, run_batch
from cwm_agent.terminal import how_to_open, make_console, shown
from cwm_agent.tts import TTSOptions

console = make_console()
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="run instances as tasks on a Ray cluster: local, auto or HOST:PORT",
        show_default=False,
    ),
]
Dataset = Annotated[str, typer.Option(help="hub name or .json/.jsonl/.parquet file")]
Split = Annotated[str, typer.Option(help="dataset split")]
Workers = Annotated[int, typer.Option(help="instances in parallel")]
ImageTemplate = Annotated[
    str | None, typer.Option(help="image name with {instance_id} or {official_id}")
]
Quiet = Annotated[bool, typer.Option("--quiet", help="no progress display")]
SCALING = flags.Group(
    TTSOptions,
    samples=Annotated[int, typer.Option(help="candidate patches per instance")],
    test_samples=Annotated[int, typer.Option(help="test-generation rollouts")],
    jobs=Annotated[int, typer.Option(help="test-time scaling: containers at once per instance")],
)
ROLLOUT = flags.ROLLOUT.pick("max_turns", "context_size", "max_reply_tokens", "session_timeout")


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tally]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(quiet=True) if quiet else console,
    )


def _tally(counts: dict[str, int], ray: str | None) -> str:
    text = " · ".join(f"{count} {name}" for name, count in counts.items())
    return text if ray is None else f"{text} · {cluster.nodes_alive()}"


def _cluster(
    ray: str | None, replicas: int | None, replica_gpus: float | None, local_slots: int
) -> cluster.ClusterOptions | None:
    """`--ray`'s options, connected to the cluster; None without --ray."""
    if ray is None:
        if (replicas, replica_gpus) != (None, None):
            raise SwebenchError("--replicas and --replica-gpus need --ray")
        return None
    given = {"replicas": replicas, "replica_gpus": replica_gpus}
    on_cluster = cluster.ClusterOptions(
        address=ray, **{k: v for k, v in given.items() if v is not None}
    )
    cluster.connect(ray, local_slots=local_slots)
    return on_cluster


app = typer.Typer(help="SWE-bench runs: run the agent, grade its predictions, report.")


@app.command()
@flags.configurable
def run(
    dataset: Dataset,
    model: Annotated[str, typer.Option(help="replay:DIR, openai:URL, or a model id/dir")],
    output: Annotated[Path, typer.Option(help="run folder (new, or --resume)")],
    split: Split = "test",
    instances: Annotated[str | None, typer.Option(help="ID,ID,...")] = None,
    instances_file: Annotated[Path | None, typer.Option(help="one ID per line")] = None,
    slice_: Annotated[str | None, typer.Option("--slice", help="A:B of the dataset")] = None,
    scaling: TTSOptions = flags.group(SCALING),
    workers: Workers = 1,
    image_template: ImageTemplate = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --output")] = False,
    rollout: RolloutConfig = flags.group(ROLLOUT),
    load: LoadConfig = flags.group(flags.LOAD),
    sampling: SamplingConfig = flags.group(flags.SAMPLING),
    ray: RayAddress = None,
    replicas: Annotated[
        int | None, typer.Option(help="with --ray: copies of a local --model (default 1)")
    ] = None,
    replica_gpus: Annotated[
        float | None, typer.Option(help="with --ray: GPUs per replica (default 1)")
    ] = None,
    quiet: Quiet = False,
    settings: dict[str, object] = flags.resolved(),
) -> None:
    """Run the agent on each instance in its own container; write predictions.jsonl."""
    if instances is not None and instances_file is not None:
        raise SwebenchError("give --instances or --instances-file, not both")
    on_cluster = _cluster(ray, replicas, replica_gpus, workers * cluster.slots_for(scaling))
    ids = instances.split(",") if instances is not None else None
    if instances_file is not None:
        ids = read_ids(instances_file)
    options = RunOptions(
        dataset=dataset,
        split=split,
        instance_ids=ids,
        slice=slice_,
        model=ModelSpec.parse(model, load, sampling),
        scaling=scaling,
        workers=workers,
        image_template=image_template,
        output=output,
        resume=resume,
        rollout=rollout,
        ray=on_cluster,
        settings=settings,
    )
    if not quiet and on_cluster is None and (loading := loading_line(options.model)):
        console.print(loading, highlight=False)  # on a cluster, the replicas load
    results = _run_batch_shown(options, quiet, ray)
    errors = sum(result.status == "error" for result in results)
    console.print(
        f"{len(results) - errors} instance(s) finished, {errors} error(s); "
        f"predictions: {output / 'predictions.jsonl'}"
        + (" (add --resume to retry the errors)" if errors else "")
    )
    console.print(how_to_open(output), highlight=False)
    if errors:  # so scripts can tell
        typer.echo(f"error: {errors} instance(s) ended in an error", err=True)
        raise typer.Exit(1)


def _run_batch_shown(options: RunOptions, quiet: bool, ray: str | None) -> list[InstanceResult]:
    """`run_batch` with a progress bar, its tally, and a line for each error."""
    tally = {"submitted": 0, "empty": 0, "error": 0}
    with _progress(quiet) as progress:
        task = progress.add_task("instances", total=None, tally="")

        def started(total: int, skipped: int) -> None:
            note = f" ({skipped} done before)" if skipped else ""
            progress.update(task, total=total, completed=skipped, tally=note)

        def done(result: InstanceResult) -> None:
            tally[result.status] += 1
            progress.update(task, advance=1, tally=_tally(tally, ray))
            if result.status == "error":
                progress.console.print(
                    f"[red]error[/] {result.instance_id}: {result.error}: "
                    f"{shown(result.reason or '')}",
                    highlight=False,
                )

        return run_batch(options, on_start=started, on_done=done)


@app.command(name="eval")
@flags.configurable
def eval_(
    predictions: Annotated[Path, typer.Option(help="predictions .jsonl or .json")],
    dataset: Dataset,
    split: Split = "test",
    backend: Annotated[
        Literal["local", "official"], typer.Option(help="local sandbox or official harness")
    ] = "local",
    output: Annotated[
        Path | None, typer.Option(help="folder for report.json (default: the predictions')")
    ] = None,
    workers: Workers = 1,
    timeout: Annotated[int, typer.Option(help="seconds for one instance's tests")] = 1800,
    image_template: ImageTemplate = None,
    ray: RayAddress = None,
    quiet: Quiet = False,
) -> None:
    """Grade predictions: apply each patch, run the tests, judge as the harness does."""
    if ray is not None:
        if backend != "local":
            raise SwebenchError("--ray grades with --backend local only")
        cluster.connect(ray, local_slots=workers)
    found = read_predictions(predictions)
    rows = load_instances(dataset, split)
    tally = {"resolved": 0, "unresolved": 0, "error": 0, "empty_patch": 0}
    with _progress(quiet) as progress:
        task = progress.add_task("grading", total=len(found), tally="")

        def done(report: InstanceReport) -> None:
            tally[report.status] += 1
            progress.update(task, advance=1, tally=_tally(tally, ray))

        report = evaluate(
            rows,
            found,
            backend=backend,
            output=output or predictions.parent,
            dataset=dataset,
            predictions_path=predictions,
            workers=workers,
            timeout=timeout,
            image_template=image_template,
            on_done=done,
            ray=ray,
        )
    console.print(
        f"resolved {report.resolved}/{report.total} ({report.resolved_rate:.1%}); "
        f"report: {(output or predictions.parent) / 'report.json'}"
    )
    errors = report.counts["error"]
    if errors:  # as `run`: scripts can tell that some predictions went ungraded
        typer.echo(f"error: {errors} instance(s) could not be graded", err=True)
        raise typer.Exit(1)


@app.command()
def bundle(
    run: Annotated[Path, typer.Argument(help="a graded run folder")],
    out: Annotated[Path, typer.Option(help="new folder for the leaderboard entry")],
    name: Annotated[str, typer.Option(help="the entry's name on the leaderboard")],
    eval_: Annotated[
        Path | None,
        typer.Option("--eval", help="the run's eval: its report.json or folder (default: RUN)"),
    ] = None,
) -> None:
    """Write a graded run as a SWE-bench leaderboard entry (the experiments repository's
    layout): all_preds.jsonl, metadata.yaml, README.md, logs/, trajs/."""
    done = write_bundle(run, eval_, out, name)
    console.print(
        f"wrote {done.out}: {done.predictions} prediction(s), logs of {done.logs} graded "
        f"instance(s), {done.trajectories} trajectories; fill in metadata.yaml's empty fields",
        highlight=False,
    )


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="a run folder")],
    json_output: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = (
        False
    ),
) -> None:
    """Resolved rate, by repo and difficulty, turns/tokens/time, errors by kind."""
    summary = summarize(folder)
    if json_output:
        typer.echo(summary.model_dump_json(indent=2))
    else:
        render(summary, console)
