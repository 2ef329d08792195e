"""The `cwm-agent` command line: a thin typer layer over the packages.

Errors a user can cause end in one line on stderr and a non-zero exit, never
a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib.metadata
import json
import os
import platform
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from docker.errors import DockerException
from git import GitCommandError
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from cwm_agent import flags
from cwm_agent.agent import MessageRecord, RolloutConfig
from cwm_agent.ci import CISettings, Stop, run_ci
from cwm_agent.ci.event import TriggerRules
from cwm_agent.ci.github import run_url
from cwm_agent.ci.guards import Limits
from cwm_agent.errors import DiskFullError, UserError, first_line, read_text
from cwm_agent.fix import FixError, FixOptions, FixResult, run_fix
from cwm_agent.model import (
    DEFAULT_MODEL,
    LoadConfig,
    ModelSpec,
    PolicyError,
    SamplingConfig,
    load_policy,
    loading_line,
)
from cwm_agent.model.openai_api import API_KEY_ENV
from cwm_agent.sandbox import (
    LABEL,
    WORKDIR,
    SandboxError,
    SandboxInterrupted,
    daemon,
    docker_client,
    remove_leftovers,
    teardown,
)
from cwm_agent.sandbox.container import owned_containers
from cwm_agent.sandbox.image import DEFAULT_IMAGE
from cwm_agent.swebench.commands import app as swebench_app
from cwm_agent.terminal import how_to_open, make_console, shown
from cwm_agent.trace.commands import register as register_trace_commands
from cwm_agent.tts import TTSOptions
from cwm_agent.tts import table as candidates_table
from cwm_agent.view import PAGE
from cwm_agent.view import write as write_view

app = typer.Typer(
    help="Fix software issues with Meta's Code World Model (CWM).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = make_console()

F = TypeVar("F", bound=Callable[..., object])


def user_errors(command: F) -> F:
    """Turn the errors a user can cause into one line and exit code 1 (130 on interrupt)."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> object:
        _ctrl_c_once()
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            typer.echo(f"error: invalid {where}: {first['msg']}", err=True)
            raise typer.Exit(1) from None
        except (DockerException, GitCommandError, OSError) as exc:
            # Not foreseen, but still the user's environment: one line, no traceback.
            typer.echo(f"error: {_unforeseen(exc)}", err=True)
            raise typer.Exit(1) from None
        except (KeyboardInterrupt, SandboxInterrupted):
            typer.echo(f"interrupted: {_leftovers()}", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


_SETTLE_S = 2.0  # for a create Docker finished as the interrupt landed; not for a slow one


def _ctrl_c_once() -> None:
    """The first Ctrl-C unwinds (removing containers, stopping a local Ray cluster);
    a second one, a moment later, must not cut that short into a traceback and
    leftovers, so from the first on Ctrl-C is ignored. (Left as it is where Ctrl-C
    is ignored already, e.g. in a background job.)"""
    main = threading.current_thread() is threading.main_thread()
    if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _unforeseen(exc: Exception) -> str:
    """The line for an error no command turned into one: a lost daemon or a full disk
    said as such, anything else as its type and first line."""
    why = daemon.lost() if isinstance(exc, daemon.LOST_ERRORS) else None
    if why is not None:
        return str(daemon.DockerLostError(why, "run the command again"))
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return str(DiskFullError(exc.filename))
    return f"{type(exc).__name__}: {first_line(exc)}"


def _leftovers() -> str:
    """What became of this process's containers, checked with the daemon."""
    teardown.close_all()
    creating = teardown.settle(timeout=_SETTLE_S)
    try:
        left = owned_containers(docker_client())
    except (SandboxError, DockerException):
        return "could not ask Docker whether containers are left: run `cwm-agent cleanup`"
    if left:
        return f"{len(left)} container(s) not removed ({' '.join(left)}): run `cwm-agent cleanup`"
    if creating:
        return (
            f"containers removed; {creating} more that Docker is still creating "
            "are removed as they appear"
        )
    return "containers removed"


SCALING = flags.Group(
    TTSOptions,
    samples=Annotated[int, typer.Option(help="test-time scaling: candidate rollouts (K)")],
    test_samples=Annotated[
        int, typer.Option(help="test-time scaling: test-generation rollouts (M)")
    ],
    jobs=Annotated[int, typer.Option(help="test-time scaling: containers at once")],
    test_cmd=Annotated[
        str | None, typer.Option(help="regression test command (default: detected)")
    ],
    regression_timeout=Annotated[
        float, typer.Option(help="seconds for the regression suite before it is narrowed")
    ],
    test_timeout=Annotated[float, typer.Option(help="seconds for one generated test")],
)


@app.command()
@flags.configurable
def fix(
    repo: Annotated[Path | None, typer.Option(help="git repository to fix (read-only)")] = None,
    issue: Annotated[str | None, typer.Option(help="the issue text")] = None,
    issue_file: Annotated[Path | None, typer.Option(help="file holding the issue text")] = None,
    model: flags.Model = DEFAULT_MODEL,
    image: flags.Image = DEFAULT_IMAGE,
    workdir: flags.Workdir = WORKDIR,
    output: flags.Output = None,
    rollout: RolloutConfig = flags.group(flags.ROLLOUT),
    branch: Annotated[
        str | None, typer.Option(help="commit the patch on this new branch of --repo")
    ] = None,
    include_uncommitted: Annotated[
        bool,
        typer.Option(
            "--include-uncommitted", help="start from the working tree's tracked changes, not HEAD"
        ),
    ] = False,
    load: LoadConfig = flags.group(flags.LOAD),
    sampling: SamplingConfig = flags.group(flags.SAMPLING),
    scaling: TTSOptions = flags.group(SCALING),
    quiet: Annotated[bool, typer.Option("--quiet", help="print only the outcome")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="print result.json")] = False,
) -> None:
    """Run CWM on a repository and an issue; write patch.diff, trajectory.json, result.json.

    Without --repo, the repository already inside --image at --workdir is used.
    """
    text = _issue_text(issue, issue_file)
    if repo is None and image == DEFAULT_IMAGE:
        raise FixError("give --repo PATH, or --image IMAGE holding the repository at --workdir")
    options = FixOptions(
        repo=repo,
        issue=text,
        model=ModelSpec.parse(model, load, sampling),
        image=image,
        workdir=workdir,
        output=output,
        branch=branch,
        include_uncommitted=include_uncommitted,
        rollout=rollout,
        scaling=scaling,
    )
    live = not (quiet or json_output)
    if live and (loading := loading_line(options.model)):
        console.print(loading, highlight=False)
    result = _run_fix_shown(options, live=live)
    if json_output:
        typer.echo(json.dumps(result.model_dump(), indent=2))
    else:
        console.print(_outcome(result), highlight=False)
    if not result.success:
        raise typer.Exit(1)


def _issue_text(issue: str | None, issue_file: Path | None) -> str:
    """The issue from exactly one of --issue and --issue-file."""
    if (issue is None) == (issue_file is None):
        raise FixError("give the issue with exactly one of --issue TEXT or --issue-file FILE")
    if issue_file is not None:
        issue = read_text(issue_file, "--issue-file", FixError)
    return issue or ""


def _run_fix_shown(options: FixOptions, live: bool) -> FixResult:
    """`run_fix` with its live view: a line per turn, or per milestone when scaled, and the
    candidates' table at the end."""
    scaled = options.scaling.enabled
    started = time.monotonic()
    view = console if live else Console(quiet=True)
    with view.status("starting the sandbox") as status:

        def observe(message: MessageRecord) -> None:
            elapsed = time.monotonic() - started
            status.update(f"turn {message.turn} · {elapsed:.0f}s")
            line = _describe(message, elapsed)
            if line is not None:
                view.print(line, highlight=False, no_wrap=True, overflow="ellipsis")

        def report(line: str) -> None:
            if scaled:  # many rollouts at once: their milestones, not every turn
                elapsed = time.monotonic() - started
                view.print(f"[dim]{elapsed:6.1f}s[/] {shown(line)}", highlight=False)
            status.update(shown(line))

        def warn(line: str) -> None:
            typer.echo(f"warning: {line}", err=True)

        fixed = run_fix(options, observer=observe, progress=report, warn=warn)
    if fixed.scaling is not None:
        view.print(candidates_table(fixed.scaling))
    return fixed.result


def _describe(message: MessageRecord, elapsed: float) -> str | None:
    """One line of the live view for a reply or a tool result; None for the rest."""
    clock = f"[dim]{elapsed:6.1f}s[/]"
    if message.role == "assistant":
        head = f"{clock} turn {message.turn:3d}"
        if message.tool_call is not None:
            first = message.tool_call.argument.strip().splitlines()[0]
            return f"{head} [bold]{message.tool_call.name}[/] {shown(_clip(first, 70))}"
        if message.format_error is not None:
            return f"{head} [yellow]{shown(_clip(message.format_error, 80))}[/]"
        return f"{head} [bold]final response[/]"
    if message.tool_result is not None:
        result = message.tool_result
        took = f"({result.duration_s * 1000:.0f} ms)"
        if result.ok:
            code = "" if result.exit_code in (None, 0) else f" exit {result.exit_code}"
            return f"{clock}          [green]ok[/]{code} {took}"
        first = result.output.strip().splitlines()[0] if result.output.strip() else ""
        return f"{clock}          [red]failed[/] {took} {shown(_clip(first, 70))}"
    return None


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _outcome(result: FixResult) -> str:
    stats = result.patch_stats
    if result.success:
        line = (
            f"[green]fixed[/]: {stats.files} file(s), +{stats.additions} -{stats.deletions} "
            f"in {result.turns} turns, {result.duration_s:.1f}s"
        )
    elif result.patch_submitted and result.patch_applies is False:
        error = shown(result.patch_error or "")
        line = f"[red]the patch does not apply[/] to {result.start}: {error}"
    else:
        reason = f" ({shown(result.reason)})" if result.reason else ""
        line = f"[red]no fix[/]: {result.status}{reason}"
    branch = (
        f"; branch {result.branch} at {result.branch_commit[:12]}" if result.branch_commit else ""
    )
    return f"{line}{branch}\noutputs: {result.output_dir}/\n{shown(how_to_open(result.output_dir))}"


CI = CISettings()  # the defaults the flags show
RULES = flags.Group(
    TriggerRules,
    label=Annotated[str, typer.Option(help="label that triggers a run")],
    command=Annotated[str, typer.Option(help="comment that triggers a run")],
)
LIMITS = flags.Group(
    Limits,
    max_files=Annotated[int, typer.Option(help="patch size limit")],
    max_lines=Annotated[int, typer.Option(help="patch size limit (added + deleted)")],
    max_bytes=Annotated[int, typer.Option(help="patch size limit")],
)


@app.command()
@flags.configurable
def ci(
    repo: Annotated[Path, typer.Option(help="the checked-out repository")] = CI.repo,
    event: Annotated[
        Path | None, typer.Option(envvar="GITHUB_EVENT_PATH", help="GitHub event payload")
    ] = None,
    event_name: Annotated[
        str | None, typer.Option(envvar="GITHUB_EVENT_NAME", help="issues or issue_comment")
    ] = None,
    repo_slug: Annotated[str | None, typer.Option(help="OWNER/NAME, with --issue")] = None,
    issue: Annotated[int | None, typer.Option(help="issue number, with --repo-slug")] = None,
    issue_file: Annotated[
        Path | None, typer.Option(help="issue text (first line: title), with --output-only")
    ] = None,
    api_url: Annotated[str, typer.Option(envvar="GITHUB_API_URL")] = CI.api_url,
    server_url: Annotated[str, typer.Option(envvar="GITHUB_SERVER_URL")] = CI.server_url,
    remote: Annotated[str | None, typer.Option(help="push URL (default: SERVER/SLUG.git)")] = None,
    token_env: Annotated[str, typer.Option(help="variable holding the token")] = "GITHUB_TOKEN",
    base: Annotated[str | None, typer.Option(help="PR base (default: the default branch)")] = None,
    rules: TriggerRules = flags.group(RULES),
    model: Annotated[
        str, typer.Option(envvar="CWM_AGENT_MODEL", help="replay:PATH, openai:URL, or a model")
    ] = DEFAULT_MODEL,
    image: flags.Image = DEFAULT_IMAGE,
    workdir: flags.Workdir = WORKDIR,
    output: flags.Output = None,
    max_turns: Annotated[int, typer.Option(help="turn cap")] = CI.max_turns,
    max_minutes: Annotated[float, typer.Option(help="wall-time cap of the agent")] = CI.max_minutes,
    samples: Annotated[
        int, typer.Option(help="test-time scaling: candidate rollouts")
    ] = CI.samples,
    test_samples: Annotated[
        int, typer.Option(help="test-time scaling: test rollouts")
    ] = CI.test_samples,
    test_cmd: Annotated[
        str | None, typer.Option(help="must pass on the patched tree (fresh sandbox)")
    ] = None,
    test_timeout: Annotated[float, typer.Option(help="seconds for --test-cmd")] = CI.test_timeout,
    protect: Annotated[
        list[str] | None, typer.Option(help="glob the patch must not touch (repeatable)")
    ] = None,
    limits: Limits = flags.group(LIMITS),
    force: Annotated[
        bool, typer.Option("--force", help="run even if another open PR references the issue")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print what would be pushed and posted")
    ] = False,
    output_only: Annotated[
        bool, typer.Option("--output-only", help="only write patch.diff, summary.md, result.json")
    ] = False,
) -> None:
    """Turn an issue into a draft pull request, or a comment saying what was tried.

    Exit codes are listed in the README ("CI bot"); skips and refusals print one line.
    \f
    Long: one parameter per flag of the bot, handed to `CISettings` as they are.
    """
    settings = CISettings(
        repo=repo,
        event_path=event,
        event_name=event_name,
        slug=repo_slug,
        issue=issue,
        issue_file=issue_file,
        api_url=api_url,
        server_url=server_url,
        remote=remote,
        token=os.environ.get(token_env) or None,
        base=base,
        rules=rules,
        model=ModelSpec.parse(model),
        image=image,
        workdir=workdir,
        output=output,
        max_turns=max_turns,
        max_minutes=max_minutes,
        samples=samples,
        test_samples=test_samples,
        test_cmd=test_cmd,
        test_timeout=test_timeout,
        protect=protect or [],
        limits=limits,
        artifact_url=run_url(os.environ),
        force=force,
        dry_run=dry_run,
        output_only=output_only,
    )
    try:
        result = run_ci(settings, say=typer.echo)
    except Stop as stop:
        typer.echo(str(stop))
        raise typer.Exit(stop.code) from None
    typer.echo(result.message)
    typer.echo(f"outputs: {result.fix.output_dir}/")
    raise typer.Exit(result.exit_code)


@app.command()
@flags.expand
def serve(
    model: Annotated[str, typer.Option(help="Hugging Face model id or local directory")],
    host: Annotated[str, typer.Option(help="address to bind (default: this machine only)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="port")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar=API_KEY_ENV,
            show_envvar=True,
            help="require this key from clients (Authorization: Bearer KEY)",
        ),
    ] = None,
    load: LoadConfig = flags.group(flags.LOAD),
) -> None:
    """Serve a local CWM over OpenAI's /v1/completions and /v1/chat/completions
    (for --model openai:URL and OpenAI clients)."""
    from cwm_agent.model.hf import TransformersPolicy
    from cwm_agent.model.server import exposure_warning, listen

    spec = ModelSpec.parse(model, load)
    if loading := loading_line(spec):
        console.print(loading, highlight=False)
    policy = load_policy(spec)
    if not isinstance(policy, TransformersPolicy):
        raise PolicyError(f"serve needs a local model (a Hub id or a directory), not {model}")
    server = listen(policy, host, port, api_key)
    if warning := exposure_warning(host, api_key):
        typer.echo(warning, err=True)
    console.print(f"serving {model} at {server.url}/v1 (Ctrl-C stops)")
    try:
        server.serve_forever()
    finally:
        server.server_close()


@app.command()
def doctor(
    image: Annotated[str, typer.Option(help="sandbox image that must be present")] = (
        DEFAULT_IMAGE
    ),
    model: Annotated[
        str | None, typer.Option(help="also check that this --model SPEC loads")
    ] = None,
) -> None:
    """Check Docker, the sandbox image, the inference stack and a model; non-zero if a
    required part is missing (the default image is built on first use, so it is optional)."""
    table = Table("check", "status", "detail")
    ok = True

    def row(name: str, good: bool, detail: str, required: bool = True) -> None:
        nonlocal ok
        ok = ok and (good or not required)
        mark = "[green]ok[/]" if good else ("[red]missing[/]" if required else "[yellow]no[/]")
        table.add_row(name, mark, detail)

    row("python", True, platform.python_version())
    try:
        client = docker_client()
    except SandboxError as exc:
        row("docker daemon", False, str(exc))
        client = None
    if client is not None:
        row("docker daemon", True, client.version().get("Version", "?"))
        present = bool(client.images.list(name=image))
        default = image == DEFAULT_IMAGE
        hint = "built on first use of fix" if default else f"docker pull {image}"
        row(f"image {image}", present, "present" if present else hint, required=not default)
    for package in ("torch", "transformers", "accelerate"):
        try:
            row(package, True, importlib.metadata.version(package))
        except importlib.metadata.PackageNotFoundError:
            row(package, False, "pip install cwm-agent")
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        detail = ", ".join(
            f"{torch.cuda.get_device_name(i)} "
            f"({torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)"
            for i in range(gpus)
        )
        row("CUDA GPUs", gpus > 0, detail or "none: local inference runs on CPU", required=False)
    except ImportError:
        pass
    if model is not None:
        try:
            row(f"model {model}", True, load_policy(ModelSpec.parse(model)).name)
        except PolicyError as exc:
            row(f"model {model}", False, str(exc))
    console.print(table)
    if not ok:
        raise typer.Exit(1)


@app.command()
def cleanup(
    all_: Annotated[
        bool, typer.Option("--all", help="also containers of live or other hosts' runs")
    ] = False,
    run: Annotated[
        str | None, typer.Option("--run", help="only the containers of this run id")
    ] = None,
) -> None:
    """Remove sandbox containers left behind by runs that are gone."""
    scope = {"label": f"{LABEL}.run={run}"} if run else {}
    removed = remove_leftovers(docker_client(), everything=all_, **scope)
    console.print(
        f"removed {len(removed)} container(s)" + (f": {' '.join(removed)}" if removed else "")
    )


@app.command()
def view(
    path: Annotated[Path, typer.Argument(help="a run folder: fix, ci, or swebench run")],
    out: Annotated[
        Path | None, typer.Option(help=f"the page to write (default PATH/{PAGE})")
    ] = None,
    serve: Annotated[bool, typer.Option("--serve", help="serve on 127.0.0.1 instead")] = False,
    port: Annotated[int, typer.Option(help="with --serve (0: any free port)")] = 8765,
) -> None:
    """Write a run folder as one self-contained HTML page, or serve it on localhost."""
    if serve:
        from cwm_agent.view.server import ViewServer

        with ViewServer(path, port) as server, contextlib.suppress(KeyboardInterrupt):
            typer.echo(f"serving {path} at {server.url} (Ctrl-C stops)")
            server.serve_forever()
        return
    written = write_view(path, out or path / PAGE)
    more = f" (and {len(written) - 1} instance pages)" if len(written) > 1 else ""
    typer.echo(f"wrote {written[0]}{more}: open {written[0].resolve().as_uri()}")


def guarded(commands: typer.Typer) -> typer.Typer:
    """`commands` with `user_errors` around each command, its sub-apps' included."""
    for command in commands.registered_commands:
        command.callback = user_errors(command.callback)
    for group in commands.registered_groups:
        guarded(group.typer_instance)
    return commands


app.add_typer(swebench_app, name="swebench")
register_trace_commands(app)
guarded(app)

if __name__ == "__main__":
    app()
