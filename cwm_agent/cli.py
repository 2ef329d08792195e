"""The `cwm-agent` command line: a thin typer layer over the packages.

Errors a user can cause end in one line on stderr and a non-zero exit, never
a traceback.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from cwm_agent.sandbox import SandboxError, SandboxInterrupted, docker_client, remove_leftovers

app = typer.Typer(
    help="Fix software issues with Meta's Code World Model (CWM).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()

F = TypeVar("F", bound=Callable[..., object])


def user_errors(command: F) -> F:
    """Turn the errors a user can cause into one line and exit code 1 (130 on interrupt)."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return command(*args, **kwargs)
        except SandboxError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except (KeyboardInterrupt, SandboxInterrupted):
            typer.echo("interrupted: containers removed", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@user_errors
def doctor(
    image: Annotated[str, typer.Option(help="sandbox image that must be present")] = (
        "cwm-base:bookworm"
    ),
) -> None:
    """Check Docker, the sandbox image and the inference stack; non-zero if one is missing."""
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
        row(f"image {image}", present, "present" if present else "build: scripts/base-image.sh")
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
    console.print(table)
    if not ok:
        raise typer.Exit(1)


@app.command()
@user_errors
def cleanup(
    all_: Annotated[
        bool, typer.Option("--all", help="also containers of live or other hosts' runs")
    ] = False,
) -> None:
    """Remove sandbox containers left behind by runs that are gone."""
    removed = remove_leftovers(docker_client(), everything=all_)
    console.print(
        f"removed {len(removed)} container(s)" + (f": {' '.join(removed)}" if removed else "")
    )


if __name__ == "__main__":
    app()
