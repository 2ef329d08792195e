"""`cwm-agent swebench bundle`: a graded run as a SWE-bench leaderboard entry.

The SWE-bench experiments repository keeps each entry as one folder under
`evaluation/<split>/<date>_<name>/`:

    all_preds.jsonl                 the predictions, one line per instance
    metadata.yaml                   info (name, site, report, ...) and tags
    README.md                       how the run was made, and the checklist
    logs/<instance_id>/             patch.diff, report.json, test_output.txt
    trajs/<instance_id>.json        the trajectory (scaled: the selected
                                    candidate's, with <instance_id>.tts.json)

This module writes that folder from a run folder and the eval that graded it,
and refuses an eval that graded other predictions than the run's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from cwm_agent.errors import first_line
from cwm_agent.swebench.errors import SwebenchError
from cwm_agent.swebench.evaluate import EvalReport, InstanceReport
from cwm_agent.swebench.predictions import Prediction, read_predictions
from cwm_agent.swebench.report import USAGE_LABELS, Summary, read_graded, read_results, summary_of
from cwm_agent.swebench.runner import RunRecord, dataset_key
from cwm_agent.toml_config import dumps as toml_dumps

LOG_FILES = ("patch.diff", "report.json", "test_output.txt")


@dataclass(frozen=True)
class Bundled:
    """What was written: counts for the one line `bundle` prints."""

    out: Path
    predictions: int
    logs: int
    trajectories: int


def bundle(run: Path, graded: Path | None, out: Path, name: str) -> Bundled:
    """Write the entry for `run` graded by the eval at `graded` (its report.json or
    the folder holding it; default: the run folder) into the new folder `out`."""
    record = _read_record(run)
    predictions = read_predictions(run / "predictions.jsonl")
    where = graded or run
    report_path = where / "report.json" if where.is_dir() else where
    report = read_graded(report_path.parent) if report_path.name == "report.json" else None
    if report is None:
        raise SwebenchError(
            f"{run} is not graded: run `cwm-agent swebench eval --predictions "
            f"{run / 'predictions.jsonl'}` first, or give --eval the report.json of its eval"
        )
    logs = _logs_of(report, report_path.parent)
    _check_same_run(run, record, predictions, report_path, report, logs)
    if not name.strip():
        raise SwebenchError("--name must not be empty: it is the entry's name on the leaderboard")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SwebenchError(f"--out {out} is not empty: choose a new folder")

    out.mkdir(parents=True, exist_ok=True)
    lines = "".join(p.model_dump_json() + "\n" for p in predictions.values())
    (out / "all_preds.jsonl").write_text(lines, encoding="utf-8")
    logged = 0
    for instance_id, verdict in report.instances.items():
        if verdict.status != "empty_patch":  # the harness writes no logs for an empty patch
            _write_logs(out / "logs" / instance_id, verdict, predictions[instance_id], logs)
            logged += 1
    trajectories = _write_trajectories(run, out / "trajs")
    summary = summary_of(read_results(run), report)
    (out / "metadata.yaml").write_text(_metadata(name, record), encoding="utf-8")
    (out / "README.md").write_text(_readme(name, record, report, summary), encoding="utf-8")
    return Bundled(out, len(predictions), logged, trajectories)


def _read_record(run: Path) -> RunRecord:
    path = run / "run.json"
    if not path.is_file():
        raise SwebenchError(f"{run} holds no run.json, so it is not a `swebench run` folder")
    try:
        return RunRecord.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise SwebenchError(f"{path} is unreadable: {first_line(exc)}") from None


def _logs_of(report: EvalReport, folder: Path) -> dict[str, Path]:
    """Each graded instance's log folder: `eval/<id>/` (local backend) or the harness's
    `logs/run_evaluation/<run_id>/<model>/<id>/` (official)."""
    if report.backend == "local":
        found = {i: folder / "eval" / i for i in report.instances}
    else:
        base = folder / "logs" / "run_evaluation" / report.run_id
        found = {path.name: path for path in base.glob("*/*") if path.is_dir()}
    return {i: path for i, path in found.items() if path.is_dir()}


def _check_same_run(
    run: Path,
    record: RunRecord,
    predictions: dict[str, Prediction],
    report_path: Path,
    report: EvalReport,
    logs: dict[str, Path],
) -> None:
    """The eval graded exactly this run's predictions: the file it names (while that is
    there), the dataset, the instances, and the patch each log holds."""
    graded = Path(report.predictions)
    if graded.exists() and graded.resolve() != (run / "predictions.jsonl").resolve():
        raise SwebenchError(
            f"{report_path} graded {graded}, not the predictions of {run}: grade "
            f"{run / 'predictions.jsonl'} with `cwm-agent swebench eval`"
        )
    other = f"{report_path} graded another run's predictions"
    if dataset_key(report.dataset) != dataset_key(record.options.dataset):
        raise SwebenchError(
            f"{other}: it used --dataset {report.dataset}, {run} was run on "
            f"{record.options.dataset}"
        )
    extra = sorted(set(report.instances) - set(predictions))
    if extra:
        raise SwebenchError(f"{other}: {extra[0]} is graded there but not predicted in {run}")
    missing = sorted(set(predictions) - set(report.instances))
    if missing:
        raise SwebenchError(
            f"{len(missing)} prediction(s) of {run} are not graded (e.g. {missing[0]}): "
            "run `cwm-agent swebench eval` on the run again"
        )
    for instance_id, folder in logs.items():
        graded_patch = folder / "patch.diff"
        patch = predictions[instance_id].model_patch or ""
        if graded_patch.is_file() and graded_patch.read_text(encoding="utf-8") != patch:
            raise SwebenchError(f"{other}: its patch for {instance_id} is not {run}'s")


def _write_logs(
    folder: Path, verdict: InstanceReport, prediction: Prediction, logs: dict[str, Path]
) -> None:
    """patch.diff, the harness's report.json, and the test output if the tests ran."""
    folder.mkdir(parents=True)
    (folder / "patch.diff").write_text(prediction.model_patch or "", encoding="utf-8")
    (folder / "report.json").write_text(json.dumps(_harness_report(verdict), indent=4) + "\n")
    found = logs.get(verdict.instance_id)
    if found is not None:
        for path in sorted(found.iterdir()):  # test_output.txt, eval.sh, run_instance.log...
            if path.is_file() and path.name not in ("patch.diff", "report.json"):
                shutil.copyfile(path, folder / path.name)


def _harness_report(verdict: InstanceReport) -> dict[str, object]:
    """The verdict in the shape the official harness writes per instance."""
    return {
        verdict.instance_id: {
            "patch_is_None": False,
            "patch_exists": True,
            "patch_successfully_applied": bool(verdict.patch_applied),
            "resolved": verdict.status == "resolved",
            **({} if verdict.tests_status is None else {"tests_status": verdict.tests_status}),
        }
    }


def _write_trajectories(run: Path, folder: Path) -> int:
    """Each instance's trajectory, and beside a scaled one the tts.json it was chosen by."""
    folder.mkdir()
    written = 0
    for instance in sorted((run / "trajectories").iterdir()):
        trajectory = instance / "trajectory.json"
        if not trajectory.is_file():  # it failed before its rollout began
            continue
        shutil.copyfile(trajectory, folder / f"{instance.name}.json")
        if (instance / "tts.json").is_file():
            shutil.copyfile(instance / "tts.json", folder / f"{instance.name}.tts.json")
        written += 1
    return written


def _attempts(record: RunRecord) -> str:
    """The leaderboard's `system.attempts`: 1, or 2+ when candidates were sampled."""
    return "2+" if record.options.scaling.enabled else "1"


def _model_name(record: RunRecord) -> str:
    spec = record.options.model
    return Path(spec.target).name if spec.kind == "local" else str(spec)


def _metadata(name: str, record: RunRecord) -> str:
    """metadata.yaml as the experiments repository's entries have it; the fields only
    the authors know are left empty for them to fill in."""
    q = json.dumps  # a JSON string is a valid YAML scalar
    return f"""\
info:
  name: {q(name)}
  site: ""  # fill in: the system's web site
  report: ""  # fill in: the technical report or blog post (the leaderboard requires one)
  logo: ""  # fill in (optional): a logo's URL
  authors: ""  # fill in: the people who made the submission
tags:
  checked: false
  model:
    - {q(_model_name(record))}
  org:
    - ""  # fill in: your organisation
  os_model: true  # CWM's weights are published
  os_system: true  # cwm-agent is open source
  system:
    attempts: {q(_attempts(record))}
"""


def _settings(record: RunRecord) -> list[str]:
    """The README's lines giving the settings: config.toml, or for a run made before
    run.json recorded them, its options."""
    if not record.options.settings:
        return [
            "where `config.toml` holds the flags behind these options (run.json's; the run "
            "was made before cwm-agent recorded its settings):",
            "",
            "```json",
            record.options.model_dump_json(indent=2),
            "```",
        ]
    return [
        "with this `config.toml` (the settings the run was made with, as run.json records them):",
        "",
        "```toml",
        toml_dumps(record.options.settings).rstrip("\n"),
        "```",
    ]


def _readme(name: str, record: RunRecord, report: EvalReport, summary: Summary) -> str:
    """How the run was made, its result and cost, and the checklist to confirm."""
    options = record.options
    first = record.sessions[0] if record.sessions else None
    run_of_all = summary.resolved_of_all or 0
    scaling = options.scaling
    lines = [
        f"# {name}",
        "",
        f"Made with cwm-agent {record.cwm_agent_version} on {options.dataset} "
        f"(split {options.split}), {first.started_at if first else 'at an unknown date'}.",
        "",
        f"- model: `{options.model}`",
        (
            f"- test-time scaling: K = {scaling.samples} candidate rollouts, "
            f"M = {scaling.test_samples} test-generation rollouts per instance"
            if scaling.enabled
            else "- one rollout per instance (no test-time scaling)"
        ),
        f"- resolved: {report.resolved}/{report.total} graded predictions "
        f"({report.resolved_rate:.1%}), {run_of_all}/{summary.instances} of all instances run "
        f"({run_of_all / max(summary.instances, 1):.1%}), graded with the {report.backend} "
        "backend",
        *(
            f"- {label}: {getattr(summary.usage, key):,.6g} in all"
            for key, label in USAGE_LABELS.items()
        ),
        "",
        "## How to run it again",
        "",
        "```sh",
        "cwm-agent swebench run --config config.toml --output RUN",
        "```",
        "",
        *_settings(record),
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in record.versions.items())}.",
        "",
        "## Checklist",
        "",
        "Confirm each line before submitting (copy it into the pull request):",
        "",
        "- [ ] Is a pass@1 submission (does not attempt the same task instance more than once)",
        "- [ ] Does not use SWE-bench test knowledge (`PASS_TO_PASS`, `FAIL_TO_PASS`)",
        "- [ ] Does not use the `hints` field in SWE-bench",
        "- [ ] Does not have web-browsing OR has taken steps to prevent lookup of SWE-bench "
        "solutions via web-browsing",
        "",
        f"Bundled {datetime.now(UTC).date().isoformat()} by `cwm-agent swebench bundle`.",
        "",
    ]
    return "\n".join(lines)
