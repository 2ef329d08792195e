"""`cwm-agent swebench eval`: grade predictions, locally or with the official harness.

local: each prediction in a fresh container of its instance's image; the
model patch is applied as the harness applies it, the test script runs, and
`grading.py` judges the log with the harness's parsers and report functions.
Logs go to `eval/<instance_id>/` beside `report.json`.

official: `swebench.harness.run_evaluation` itself (classic rows, official
images), its per-instance reports gathered into the same `report.json`.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import docker
from pydantic import BaseModel, Field

from cwm_agent.atomic_write import write_atomically, write_json
from cwm_agent.errors import first_line
from cwm_agent.sandbox import (
    WORKDIR,
    Sandbox,
    SandboxError,
    daemon,
    docker_client,
    remove_leftovers,
)
from cwm_agent.swebench.cluster import run_on_cluster
from cwm_agent.swebench.dataset import Instance
from cwm_agent.swebench.errors import SwebenchError
from cwm_agent.swebench.images import BATCH_LABEL, image_for, workspace_for
from cwm_agent.swebench.parallel import run_parallel
from cwm_agent.swebench.predictions import Prediction

if TYPE_CHECKING:
    from cwm_agent.swebench.grading import EvalPlan

Outcome = Literal["resolved", "unresolved", "error", "empty_patch"]
Backend = Literal["local", "official"]

# swebench.harness.run_evaluation.GIT_APPLY_CMDS (that module imports modal and
# the whole harness; the list is checked against it in the tests).
GIT_APPLY_CMDS = (
    "git apply --verbose",
    "git apply --verbose --reject",
    "patch --batch --fuzz=5 -p1 -i",
)
PATCH_PATH = "/tmp/cwm-agent-model.diff"


class InstanceReport(BaseModel):
    instance_id: str
    repo: str
    difficulty: str | None
    status: Outcome
    reason: str | None = None
    patch_applied: bool | None = None
    tests_status: dict[str, dict[str, list[str]]] | None = None
    duration_s: float = 0.0


class EvalReport(BaseModel):
    """`report.json`: the verdict per instance and the counts."""

    backend: Backend
    run_id: str
    dataset: str
    predictions: str
    created_at: str
    total: int = Field(description="predictions graded")
    resolved: int
    resolved_rate: float
    counts: dict[str, int]
    harness_report: str | None = Field(None, description="the official harness's summary")
    instances: dict[str, InstanceReport]


def evaluate(
    instances: list[Instance],
    predictions: dict[str, Prediction],
    *,
    backend: Backend,
    output: Path,
    dataset: str,
    predictions_path: Path,
    workers: int = 1,
    timeout: int = 1800,
    image_template: str | None = None,
    on_done: Callable[[InstanceReport], None] | None = None,
    ray: str | None = None,
) -> EvalReport:
    """Grade every prediction whose instance is in `instances`; write `output/report.json`.
    With `ray` (connected to by the caller), local grading runs as tasks on its nodes."""
    _require_harness()
    graded = _to_grade(instances, predictions)
    run_id = f"cwm-agent-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    output.mkdir(parents=True, exist_ok=True)
    patches = {i.instance_id: _patch(predictions, i) for i in graded}  # each looked up once
    to_apply = {name: patch for name, patch in patches.items() if patch is not None}
    reports = {i.instance_id: _empty(i) for i in graded if i.instance_id not in to_apply}
    _announce(reports.values(), on_done)
    patched = [i for i in graded if i.instance_id in to_apply]
    harness_report = None
    if patched and backend == "local":
        reports |= _local(
            patched, to_apply, output, run_id, workers, timeout, image_template, on_done, ray
        )
    elif patched:
        found, harness_report = _official(
            patched, predictions_path, output, run_id, workers, timeout
        )
        reports |= found
        _announce(found.values(), on_done)
    report = _summary(backend, run_id, dataset, predictions_path, reports, harness_report)
    write_json(output / "report.json", report)
    if report.counts["error"] and backend == "local":  # the daemon lost, or just some failed?
        daemon.check("grade again with `cwm-agent swebench eval`")
    return report


def _require_harness() -> None:
    """Fail before any container starts: grading uses the harness's parsers and reports."""
    try:
        import swebench.harness.grading  # noqa: F401  (the parsers and grading we rely on)
    except ImportError:
        raise SwebenchError(
            "grading needs the official swebench package: pip install 'cwm-agent[swebench]'"
        ) from None


def _to_grade(instances: list[Instance], predictions: dict[str, Prediction]) -> list[Instance]:
    """The instances with a prediction, in dataset order; a prediction for an instance
    the dataset lacks is a mistake (a wrong dataset or split), not something to skip."""
    by_id = {instance.instance_id: instance for instance in instances}
    unknown = [i for i in predictions if i not in by_id]
    if unknown:
        raise SwebenchError(
            f"{len(unknown)} prediction(s) name instances not in the dataset, e.g. {unknown[0]}"
        )
    graded = [by_id[i] for i in by_id if i in predictions]
    if not graded:
        raise SwebenchError("no predictions to grade")
    return graded


def _announce(
    reports: Iterable[InstanceReport], on_done: Callable[[InstanceReport], None] | None
) -> None:
    """Tell the caller about verdicts that did not come one by one from a worker."""
    if on_done is not None:
        for report in reports:
            on_done(report)


def _summary(
    backend: Backend,
    run_id: str,
    dataset: str,
    predictions_path: Path,
    reports: dict[str, InstanceReport],
    harness_report: str | None,
) -> EvalReport:
    """The counts over every verdict, with the verdicts sorted by instance id."""
    counts = Counter(report.status for report in reports.values())
    return EvalReport(
        backend=backend,
        run_id=run_id,
        dataset=dataset,
        predictions=str(predictions_path),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        total=len(reports),
        resolved=counts["resolved"],
        resolved_rate=round(counts["resolved"] / len(reports), 4),
        counts={key: counts[key] for key in ("resolved", "unresolved", "error", "empty_patch")},
        harness_report=harness_report,
        instances=dict(sorted(reports.items())),
    )


def _patch(predictions: dict[str, Prediction], instance: Instance) -> str | None:
    patch = predictions[instance.instance_id].model_patch
    return patch if patch and patch.strip() else None


def _empty(instance: Instance) -> InstanceReport:
    return InstanceReport(
        instance_id=instance.instance_id,
        repo=instance.repo,
        difficulty=instance.difficulty,
        status="empty_patch",
    )


def _local(
    instances: list[Instance],
    patches: dict[str, str],
    output: Path,
    run_id: str,
    workers: int,
    timeout: int,
    image_template: str | None,
    on_done: Callable[[InstanceReport], None] | None,
    ray: str | None,
) -> dict[str, InstanceReport]:
    """Grade each instance's non-empty patch in this process's threads, or as Ray tasks."""
    reports: dict[str, InstanceReport] = {}

    def done(report: InstanceReport) -> None:
        reports[report.instance_id] = report
        if on_done is not None:
            on_done(report)

    if ray is not None:

        def lost(instance: Instance, reason: str) -> InstanceReport:
            return InstanceReport(
                instance_id=instance.instance_id,
                repo=instance.repo,
                difficulty=instance.difficulty,
                status="error",
                reason=f"on the cluster: {reason}",
            )

        work = functools.partial(_grade_on_node, patches, run_id, timeout, image_template)
        run_on_cluster(instances, work, output, 1, lambda _, shipped: done(shipped.value), lost)
        return reports
    client = docker_client()

    def grade_here(instance: Instance, stopping: threading.Event) -> InstanceReport | None:
        if stopping.is_set():
            return None
        folder = output / "eval" / instance.instance_id
        patch = patches[instance.instance_id]
        report = evaluate_instance(instance, patch, folder, client, run_id, timeout, image_template)
        return None if stopping.is_set() else report

    run_parallel(instances, grade_here, workers, done)
    return reports


def _grade_on_node(
    patches: dict[str, str],
    run_id: str,
    timeout: int,
    image_template: str | None,
    instance: Instance,
    scratch: Path,
) -> InstanceReport:
    """A Ray task's body: one instance graded on this node, its logs under `scratch`."""
    folder = scratch / "eval" / instance.instance_id
    client = docker_client()
    remove_leftovers(client, label=f"{BATCH_LABEL}={run_id}")
    return evaluate_instance(
        instance, patches[instance.instance_id], folder, client, run_id, timeout, image_template
    )


def evaluate_instance(
    instance: Instance,
    patch: str,
    folder: Path,
    client: docker.DockerClient,
    run_id: str,
    timeout: int = 1800,
    image_template: str | None = None,
) -> InstanceReport:
    """Apply a non-empty `patch`, run the instance's tests, grade the log; never raises
    for the instance's own failures."""
    from cwm_agent.swebench.grading import eval_plan, grade  # imports the harness (~1 s)

    started = time.monotonic()
    report = InstanceReport(
        instance_id=instance.instance_id,
        repo=instance.repo,
        difficulty=instance.difficulty,
        status="error",
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / "patch.diff", patch)
    workspace = workspace_for(image_for(instance, image_template), run_id, hygiene=False)
    try:
        with workspace.open(client) as opened:
            plan = eval_plan(instance, opened.head, WORKDIR)
            write_atomically(folder / "eval.sh", plan.script)
            log = _run_tests(opened.box, patch, plan, timeout)
    except (SwebenchError, SandboxError, *daemon.LOST_ERRORS) as exc:
        report.reason = daemon.reason_for(exc) or first_line(exc, 300)
        report.duration_s = round(time.monotonic() - started, 3)
        return report
    write_atomically(folder / "test_output.txt", log)
    if log.startswith(">>>>> Patch Apply Failed"):
        report.patch_applied, report.reason = False, "the patch does not apply"
    elif log.endswith("seconds exceeded."):
        report.patch_applied, report.reason = True, f"the tests ran past {timeout} s"
    else:
        verdict = grade(instance, log, plan)
        report.patch_applied = True
        report.status = "resolved" if verdict.resolved else "unresolved"
        if not verdict.tests_ran:
            report.reason = "no usable test output in the log"
        if verdict.tests_status is not None:
            report.tests_status = {k: v.model_dump() for k, v in verdict.tests_status.items()}
    report.duration_s = round(time.monotonic() - started, 3)
    write_json(folder / "report.json", report)
    return report


def _run_tests(box: Sandbox, patch: str, plan: EvalPlan, timeout: int) -> str:
    """The harness's steps: apply the patch (three ways), then the script, output merged."""
    box.write_file(PATCH_PATH, patch.encode(), mode=0o644)
    for command in GIT_APPLY_CMDS:
        code, out, err = box.exec(["bash", "-c", f"{command} {PATCH_PATH}"])
        if code == 0:
            break
    else:
        return f">>>>> Patch Apply Failed:\n{(out + err).decode('utf-8', 'replace')}"
    box.write_file("/eval.sh", plan.script.encode(), mode=0o755)
    code, out, _ = box.exec(["bash", "-c", f"timeout {timeout} bash /eval.sh 2>&1"])
    log = out.decode("utf-8", "replace")
    if code == 124:
        log += f"\n\nTimeout error: {timeout} seconds exceeded."
    return log


def _official(
    instances: list[Instance],
    predictions_path: Path,
    output: Path,
    run_id: str,
    workers: int,
    timeout: int,
) -> tuple[dict[str, InstanceReport], str | None]:
    """The harness run as its authors run it, in `output` (its logs/ go there)."""
    from swebench.harness.run_evaluation import main as run_evaluation

    not_classic = [i.instance_id for i in instances if i.test_cmd or i.eval_script]
    if not_classic:
        raise SwebenchError(
            f"the official backend grades classic SWE-bench rows only ({not_classic[0]} brings "
            "its own test command or script): use --backend local"
        )
    dataset_file = (output / "dataset.jsonl").resolve()
    write_atomically(dataset_file, "".join(json.dumps(i.row()) + "\n" for i in instances))
    predictions_file = predictions_path.resolve()
    here = Path.cwd()
    os.chdir(output)
    try:
        summary = run_evaluation(
            dataset_name=str(dataset_file),
            split="test",
            instance_ids=[i.instance_id for i in instances],
            predictions_path=str(predictions_file),
            max_workers=workers,
            force_rebuild=False,
            cache_level="env",
            clean=False,
            open_file_limit=4096,
            run_id=run_id,
            timeout=timeout,
            namespace="swebench",
            rewrite_reports=False,
            modal=False,
            report_dir=".",
        )
    except Exception as exc:  # the harness raises whatever its parts raise
        raise SwebenchError(f"the official harness failed: {first_line(exc)}") from None
    finally:
        os.chdir(here)
    reports = {}
    logs = output / "logs" / "run_evaluation" / run_id
    for instance in instances:
        reports[instance.instance_id] = _from_harness(instance, logs)
    return reports, str(output / summary) if summary else None


def _from_harness(instance: Instance, logs: Path) -> InstanceReport:
    report = InstanceReport(
        instance_id=instance.instance_id,
        repo=instance.repo,
        difficulty=instance.difficulty,
        status="error",
    )
    found = list(logs.glob(f"*/{instance.instance_id}/report.json"))
    if not found:
        report.reason = "the harness wrote no report: see its run_instance.log"
        return report
    verdict = json.loads(found[0].read_text())[instance.instance_id]
    report.patch_applied = verdict.get("patch_successfully_applied")
    report.status = "resolved" if verdict.get("resolved") else "unresolved"
    report.tests_status = verdict.get("tests_status")
    return report
