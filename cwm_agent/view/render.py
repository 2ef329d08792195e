"""Run folders to HTML through the Jinja2 templates shipped with the package.

Every page is one self-contained file: its stylesheet, script and charts are
inline and nothing is fetched, so it opens from a CI artifact or offline.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from cwm_agent.atomic_write import write_atomically
from cwm_agent.swebench.runner import InstanceResult
from cwm_agent.terminal import plain
from cwm_agent.view import highlight, pages
from cwm_agent.view.runs import (
    BatchRun,
    RolloutRun,
    TTSRun,
    ViewError,
    kind_of,
    load_instance,
    load_rollout,
    load_tts,
    within,
)

InstanceLink = Callable[[str], str]  # instance id -> the href of its page


def _asset(name: str) -> Markup:
    return Markup(files("cwm_agent.view").joinpath("templates", name).read_text("utf-8"))


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _short(named: object) -> str:
    """A model or dataset without the folders of a local path (the page's title has it whole)."""
    spec = str(named)  # a `ModelSpec` reads as the --model text it was given
    kind, colon, rest = spec.partition(":")
    if colon and kind == "replay":
        return f"replay:{Path(rest).name}"
    return Path(spec).name if spec.startswith("/") else spec


def _plain(value: object) -> object:
    """Text as the terminal view shows it, without escape sequences: a test's coloured
    output reads as its words, and no control byte lands in the page. Markup (the
    highlighted code, the inline assets) was made from plain text already."""
    return plain(value) if isinstance(value, str) and not isinstance(value, Markup) else value


_env = Environment(
    loader=PackageLoader("cwm_agent.view", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    finalize=_plain,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(
    diff=highlight.diff, tool_argument=highlight.tool_argument, seconds=_seconds, short=_short
)
_env.globals.update(
    css=_asset("view.css") + Markup(highlight.stylesheet()),
    script=_asset("view.js"),
    turns=pages.turns,
    prompt=pages.prompt,
    token_chart=pages.token_chart,
)


def rollout_page(run: RolloutRun, instance: InstanceResult | None = None) -> str:
    return _env.get_template("rollout.html.j2").render(run=run, t=run.trajectory, instance=instance)


def tts_page(run: TTSRun, instance: InstanceResult | None = None) -> str:
    report = run.report
    paths = {f"candidate-{c.index}": c.trajectory for c in report.candidates} | {
        f"testgen-{t.index}": t.trajectory for t in report.generated_tests
    }
    rollouts, skipped = {}, []
    for name, path in paths.items():
        try:
            found = run.rollout(path)
        except ViewError as exc:  # one bad rollout costs its own page, not the run's
            skipped.append(f"{name}: {exc}")
            continue
        if found is not None:
            rollouts[name] = found
    return _env.get_template("tts.html.j2").render(
        run=run,
        report=report,
        matrix=pages.matrix(report),
        rollouts=rollouts,
        notes=pages.notes(report),
        skipped=skipped,
        instance=instance,
    )


def batch_page(run: BatchRun, link: InstanceLink) -> str:
    summary = pages.summary(run)
    return _env.get_template("batch.html.j2").render(
        run=run,
        rows=pages.rows(run),
        summary=summary,
        charts=pages.batch_charts(run, summary),
        link=link,
        skipped=run.skipped,
    )


def instance_page(run: BatchRun, instance_id: str) -> str | None:
    """One instance's page, read only now; None for an id the run does not have."""
    folder = run.instance_folder(instance_id)
    if folder is None or not (folder / "trajectory.json").is_file():
        return None
    result = run.results[instance_id]
    found = load_instance(folder)
    if isinstance(found, TTSRun):
        return tts_page(found, result)
    return rollout_page(found, result)


def static_link(instance_id: str) -> str:
    """Where `write` puts an instance's page, relative to the batch's index."""
    return f"trajectories/{instance_id}/index.html"


def write(folder: Path, out: Path) -> list[Path]:
    """Render the run at `folder` to `out`; a batch also gets a page per instance
    (rendered one at a time, beside its results). Returns the files written."""
    kind = kind_of(folder)
    if kind == "rollout":
        return [_write(out, rollout_page(load_rollout(folder)))]
    if kind == "tts":
        return [_write(out, tts_page(load_tts(folder)))]
    run = BatchRun(folder)
    prefix = Path(_relative(folder, out.parent))
    written = [_write(out, batch_page(run, lambda i: (prefix / static_link(i)).as_posix()))]
    for instance_id in run.results:
        page = instance_page(run, instance_id)
        if page is not None:
            written.append(_write(within(folder, static_link(instance_id)), page))
    return written


def _relative(target: Path, start: Path) -> str:
    return os.path.relpath(target.resolve(), start.resolve())


def _write(path: Path, html: str) -> Path:
    write_atomically(path, html)
    return path
