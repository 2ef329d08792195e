"""A run folder read into the typed records the runs wrote, and nothing more.

Three kinds of folder exist: a rollout (`trajectory.json`: a `fix` run, a CI
run, one candidate, one SWE-bench instance), a test-time scaling run
(`tts.json` beside it) and a SWE-bench batch (`run.json`, `predictions.jsonl`,
`trajectories/`). A batch's instances are read lazily, one page at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel
from pydantic_core import from_json

from cwm_agent.agent import Trajectory
from cwm_agent.errors import UserError, unreadable
from cwm_agent.fix import FixResult
from cwm_agent.swebench.dataset import INSTANCE_ID
from cwm_agent.swebench.errors import SwebenchError
from cwm_agent.swebench.evaluate import EvalReport
from cwm_agent.swebench.report import read_graded, read_results
from cwm_agent.swebench.runner import InstanceResult, RunRecord
from cwm_agent.tts import TTSReport

Kind = Literal["rollout", "tts", "batch"]
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class ViewError(UserError):
    """A folder that is not a run, or a record that does not read; meant for users."""


class CIOutcome(BaseModel):
    """What `cwm-agent ci` decided, from its `result.json` (the fix run sits inside)."""

    outcome: str
    message: str
    pull_request: str | None = None
    comment: str | None = None


def kind_of(folder: Path) -> Kind:
    if not folder.is_dir():
        raise ViewError(f"{folder} is not a folder: give a run folder (fix, ci or swebench run)")
    if (folder / "run.json").is_file() or (folder / "trajectories").is_dir():
        return "batch"
    if (folder / "tts.json").is_file():
        return "tts"
    if (folder / "trajectory.json").is_file():
        return "rollout"
    raise ViewError(
        f"{folder} holds no trajectory.json, tts.json or run.json: it is not a run folder"
    )


def within(folder: Path, relative: str | Path) -> Path:
    """`folder / relative`, refused when it leads out of `folder` (`..`, an absolute path,
    a link): run folders travel, and the view reads or writes nothing outside the one given."""
    path = folder / relative
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ViewError(f"{path} leads out of {folder}: refused (the view stays inside a run)")
    return path


def read(folder: Path, name: str, model: type[M]) -> M:
    path = within(folder, name)
    try:
        return model.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as exc:  # a ValidationError too
        raise ViewError(unreadable(path, exc)) from None


def _optional(folder: Path, name: str, model: type[M]) -> M | None:
    return read(folder, name, model) if (folder / name).is_file() else None


def _text(folder: Path, name: str) -> str:
    path = within(folder, name)
    return path.read_bytes().decode("utf-8", "replace") if path.is_file() else ""


@dataclass
class RolloutRun:
    folder: Path
    trajectory: Trajectory
    result: FixResult | None
    ci: CIOutcome | None
    patch: str


def load_rollout(folder: Path) -> RolloutRun:
    result, ci = None, None
    path = within(folder, "result.json")
    if path.is_file():
        try:
            data = from_json(path.read_bytes())
            if isinstance(data, dict) and isinstance(data.get("fix"), dict):  # a CI run's
                ci = CIOutcome.model_validate(data)
                data = data["fix"]
            if isinstance(data, dict) and "start_commit" in data:  # not an instance's result
                result = FixResult.model_validate(data)
        except (OSError, ValueError) as exc:  # a ValidationError too
            raise ViewError(unreadable(path, exc)) from None
    return RolloutRun(
        folder=folder,
        trajectory=read(folder, "trajectory.json", Trajectory),
        result=result,
        ci=ci,
        patch=_text(folder, "patch.diff"),
    )


@dataclass
class TTSRun:
    folder: Path
    report: TTSReport
    result: FixResult | None
    patch: str

    def rollout(self, relative: str) -> RolloutRun | None:
        """A candidate's or a test generator's rollout, by the path tts.json gives (which
        must stay inside this run)."""
        folder = within(self.folder, relative).parent
        return load_rollout(folder) if (folder / "trajectory.json").is_file() else None


def load_tts(folder: Path) -> TTSRun:
    rollout = load_rollout(folder) if (folder / "trajectory.json").is_file() else None
    return TTSRun(
        folder=folder,
        report=read(folder, "tts.json", TTSReport),
        result=None if rollout is None else rollout.result,
        patch=_text(folder, "patch.diff"),
    )


@dataclass
class BatchRun:
    """A SWE-bench run folder: per-instance results are small; trajectories stay on disk."""

    folder: Path

    @cached_property
    def record(self) -> RunRecord | None:
        return _optional(self.folder, "run.json", RunRecord)

    @cached_property
    def graded(self) -> EvalReport | None:
        within(self.folder, "report.json")  # before swebench's reader follows a link out
        return _reading(read_graded, self.folder)

    @cached_property
    def _checked(self) -> tuple[dict[str, InstanceResult], list[str]]:
        """The results whose id `swebench run` could have made, and a note for each other."""
        for path in self.folder.glob("trajectories/*/result.json"):  # as for report.json
            within(self.folder, path.relative_to(self.folder))
        results, skipped = {}, []
        for result in _reading(read_results, self.folder):
            if re.fullmatch(INSTANCE_ID, result.instance_id):
                results[result.instance_id] = result
            else:
                why = "not an id swebench run makes (a folder name, no / or ..)"
                skipped.append(f"instance id {result.instance_id!r}: {why}: skipped")
        return results, skipped

    @property
    def results(self) -> dict[str, InstanceResult]:
        return self._checked[0]

    @property
    def skipped(self) -> list[str]:
        return self._checked[1]

    def instance_folder(self, instance_id: str) -> Path | None:
        """The instance's folder, only for an id this run has (never a path from outside)."""
        known = instance_id in self.results
        return within(self.folder, Path("trajectories", instance_id)) if known else None


def _reading(reader: Callable[[Path], T], folder: Path) -> T:
    """What `swebench report` reads, with its one-line errors as the view's."""
    try:
        return reader(folder)
    except SwebenchError as exc:
        raise ViewError(str(exc)) from None


def load_instance(folder: Path) -> RolloutRun | TTSRun:
    """One instance of a batch: a rollout, or a test-time scaling run."""
    return load_tts(folder) if (folder / "tts.json").is_file() else load_rollout(folder)
