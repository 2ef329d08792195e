"""`cwm-agent swebench run`: one agent per instance, in parallel, resumable.

Layout of a run folder:
    predictions.jsonl               official format, one line per finished instance
    trajectories/<instance_id>/     trajectory.json, patch.diff, result.json
    run.json                        options, package versions, one entry per session
    config.toml                     the first session's settings, for `--config`

An instance is done once its line is in predictions.jsonl; anything else in
its folder is from a session that stopped half-way and is redone on --resume.
Errors (missing image, dead container, model failure) get a result.json but
no prediction, so a resumed run retries them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import platform
import shutil
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import docker
from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from cwm_agent import toml_config
from cwm_agent.agent import RolloutConfig, Usage
from cwm_agent.atomic_write import write_json
from cwm_agent.errors import DiskFullError, first_line
from cwm_agent.model import ModelSpec, PolicyError, PolicyPool
from cwm_agent.sandbox import ImageNotFoundError, daemon, docker_client, remove_leftovers, teardown
from cwm_agent.solve import Solution, solve
from cwm_agent.swebench import cluster
from cwm_agent.swebench.cluster import ClusterOptions
from cwm_agent.swebench.dataset import ALIASES, Instance, load_instances, select
from cwm_agent.swebench.errors import SwebenchError
from cwm_agent.swebench.images import BATCH_LABEL, image_for, workspace_for
from cwm_agent.swebench.parallel import run_parallel
from cwm_agent.swebench.predictions import Prediction, PredictionsFile
from cwm_agent.tts import TTSOptions
from cwm_agent.tts.regression import Detector

ErrorKind = Literal["image_missing", "sandbox", "model"]


class RunOptions(BaseModel):
    """Everything `swebench run` was asked to do, validated before any work starts."""

    dataset: str
    split: str = "test"
    instance_ids: list[str] | None = None
    slice: str | None = None
    model: ModelSpec
    scaling: TTSOptions = Field(default_factory=TTSOptions, description="per instance")
    workers: int = Field(1, ge=1)
    image_template: str | None = None
    output: Path
    resume: bool = False
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    ray: ClusterOptions | None = Field(None, description="`--ray`; None: threads here")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="the command's flags as resolved, keyed as config.toml keys them",
    )

    @model_validator(mode="before")
    @classmethod
    def _spec_from_run_json(cls, data: object) -> object:
        """run.json holds the spec as its text and its knobs beside it, flat."""
        if isinstance(data, dict) and "model_options" in data:
            data = {**data}
            data["model"] = ModelSpec.from_knobs(data["model"], data.pop("model_options"))
        return data

    @model_serializer(mode="wrap")
    def _spec_as_run_json(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """The form `_spec_from_run_json` reads, keys in the order run.json always had."""
        shown: dict[str, object] = {}
        for key, value in handler(self).items():
            if key == "model":
                shown["model"], shown["model_options"] = str(self.model), self.model.knobs()
            else:
                shown[key] = value
        return shown


class InstanceResult(BaseModel):
    """`trajectories/<id>/result.json`: how one instance went, for `swebench report`."""

    instance_id: str
    repo: str
    difficulty: str | None
    image: str
    start: str | None = Field(None, description="the container's HEAD the agent started from")
    status: Literal["submitted", "empty", "error"]
    rollout_status: str | None = None
    error: ErrorKind | None = None
    reason: str | None = None
    turns: int = 0
    tokens_used: int = 0
    duration_s: float = 0.0
    usage: Usage = Field(
        default_factory=Usage, description="tokens and model/sandbox seconds, every rollout's"
    )
    usage_by_part: dict[str, Usage] | None = Field(
        None, description="test-time scaling: candidates, testgen, tests"
    )
    patch_bytes: int = 0
    node: str | None = Field(None, description="the Ray node it ran on (`--ray`)")
    worker: str | None = Field(None, description="host/thread that ran it")


class Session(BaseModel):
    options: RunOptions  # a resumed session may change workers, budgets or samples
    started_at: str
    finished_at: str | None = None
    duration_s: float | None = None
    selected: int
    skipped: int = Field(description="already in predictions.jsonl when the session began")
    finished: int = 0
    errors: int = 0
    interrupted: bool = False


class RunRecord(BaseModel):
    """`run.json`: what produced the predictions, so others can reproduce them."""

    cwm_agent_version: str
    versions: dict[str, str]
    options: RunOptions
    rows: dict[str, str] = Field(
        default_factory=dict, description="a fingerprint of each instance's row, by id"
    )
    sessions: list[Session] = Field(default_factory=list)


def policy_source(options: RunOptions) -> Callable[[Instance], PolicyPool]:
    """`replay:DIR` gives each instance `DIR/<instance_id>.json` (with several
    samples, the folder `DIR/<instance_id>/`); any other spec is loaded once,
    here, so a bad --model fails before the first container starts, and every
    worker's requests share it (an in-process model batches them)."""
    spec = options.model
    if spec.kind == "replay" and spec.path.is_dir():
        suffix = "" if options.scaling.enabled else ".json"
        return lambda instance: PolicyPool(
            spec.model_copy(update={"target": f"{spec.path / instance.instance_id}{suffix}"})
        )
    if options.ray is not None:  # each node's tasks open the spec (a local one: replicas)
        return lambda instance: PolicyPool(spec)
    shared = PolicyPool(spec)
    return lambda instance: shared


InstanceObserver = Callable[[InstanceResult], None]


def run_batch(
    options: RunOptions,
    on_start: Callable[[int, int], None] | None = None,
    on_done: InstanceObserver | None = None,
) -> list[InstanceResult]:
    """Run every selected instance not yet predicted; return the results of this session.

    `on_start(total, skipped)` is called once the work is known, `on_done` after
    each instance. Ctrl-C or SIGTERM removes every container and re-raises; what
    had finished stays recorded.
    """
    teardown.install_signal_handlers()  # a SIGTERM from here on unwinds like Ctrl-C
    return _Batch(options, on_done).run(on_start)


class _Batch:
    """One session of a batch: the instances left to do, where their outcomes go."""

    def __init__(self, options: RunOptions, on_done: InstanceObserver | None) -> None:
        self.options, self.on_done = options, on_done
        self.instances = select(
            load_instances(options.dataset, options.split), options.instance_ids, options.slice
        )
        self.output = options.output
        self.record = _open_record(options)
        _check_rows(self.record, self.instances)
        self.predictions = PredictionsFile(self.output / "predictions.jsonl")
        self.todo = [i for i in self.instances if i.instance_id not in self.predictions.done]
        self.policy_for = policy_source(options)
        self.client = docker_client()
        self.run_id = self.output.resolve().name
        # A session killed while Docker was creating a container leaves that container
        # behind once the daemon finishes: such orphans are cleared at both ends.
        self.orphans = f"{BATCH_LABEL}={self.run_id}"
        self.results: list[InstanceResult] = []
        self.lost: str | None = None  # why the daemon stopped answering, once it has

    def run(self, on_start: Callable[[int, int], None] | None) -> list[InstanceResult]:
        """The session, recorded in run.json from its first write to its end."""
        for instance in self.todo:  # half-finished by an earlier session
            shutil.rmtree(self.output / "trajectories" / instance.instance_id, ignore_errors=True)
        remove_leftovers(self.client, label=self.orphans)
        self.session = Session(
            options=self.options,
            started_at=_now(),
            selected=len(self.instances),
            skipped=len(self.instances) - len(self.todo),
        )
        self.record.sessions.append(self.session)
        started = time.monotonic()
        try:  # from the first write of the session on, an interrupt is recorded as one
            _write_record(self.output, self.record)
            if on_start is not None:
                on_start(len(self.instances), self.session.skipped)
            self.run_instances()
        except BaseException:
            self.session.interrupted = True
            raise
        finally:
            if self.lost is None:
                remove_leftovers(self.client, label=self.orphans)
            self.session.finished_at = _now()
            self.session.duration_s = round(time.monotonic() - started, 3)
            _write_record(self.output, self.record)
        if self.lost is not None:
            raise daemon.DockerLostError(
                self.lost,
                f"add --resume to finish the run (`cwm-agent cleanup --run {self.run_id}` "
                "removes any of its containers left)",
            )
        return self.results

    def run_instances(self) -> None:
        """In this process's threads, or as tasks on a Ray cluster."""
        if self.options.ray is None:
            run_parallel(self.todo, self.work, self.options.workers, self.done)
        else:
            self.run_on_cluster(self.options.ray)

    def run_on_cluster(self, settings: ClusterOptions) -> None:
        """Each instance as a Ray task; its outcome is recorded here as it lands."""

        def landed(
            instance: Instance, shipped: cluster.Shipped[tuple[InstanceResult, bytes]]
        ) -> None:
            result, patch = shipped.value
            result.node = shipped.node or None
            self.done(self.write_outcome(instance, result, patch))

        def lost(instance: Instance, reason: str) -> tuple[InstanceResult, bytes]:
            result = InstanceResult(
                instance_id=instance.instance_id,
                repo=instance.repo,
                difficulty=instance.difficulty,
                image=image_for(instance, self.options.image_template),
                status="error",
                error="sandbox",
                reason=f"on the cluster: {reason}",
            )
            return result, b""

        with cluster.model_replicas(self.options.model, settings) as replicas:
            work = functools.partial(_run_on_node, self.options, self.run_id, replicas)
            slots = cluster.slots_for(self.options.scaling)
            cluster.run_on_cluster(self.todo, work, self.options.output, slots, landed, lost)

    def work(self, instance: Instance, stopping: threading.Event) -> InstanceResult | None:
        """One instance in a worker thread; None once the batch is stopping, or once the
        daemon is lost (an instance not begun is left for --resume, not failed)."""
        if stopping.is_set() or self.lost is not None:
            return None
        result, patch = _run_instance(
            instance, self.options, self.policy_for, self.client, self.run_id, stopping
        )
        if stopping.is_set():  # its container was torn down under it: not a real outcome
            return None
        if result.status == "error" and (why := daemon.lost()) is not None:
            self.lost = why
            result.error, result.reason = "sandbox", daemon.lost_reason(why)
        return self.write_outcome(instance, result, patch)

    def write_outcome(
        self, instance: Instance, result: InstanceResult, patch: bytes
    ) -> InstanceResult:
        """result.json, and the prediction unless the instance errored."""
        folder = self.output / "trajectories" / instance.instance_id
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "result.json", result)
        if result.status != "error":
            self.predictions.add(
                Prediction(
                    instance_id=instance.instance_id,
                    model_name_or_path=str(self.options.model),
                    model_patch=patch.decode("utf-8", "surrogateescape"),
                )
            )
        return result

    def done(self, result: InstanceResult) -> None:
        """Counted in this session, then shown (in the thread that runs the batch)."""
        self.results.append(result)
        if result.status == "error":
            self.session.errors += 1
        else:
            self.session.finished += 1
        if self.on_done is not None:
            self.on_done(result)


def _run_instance(
    instance: Instance,
    options: RunOptions,
    policy_for: Callable[[Instance], PolicyPool],
    client: docker.DockerClient,
    run_id: str,
    stopping: threading.Event,
) -> tuple[InstanceResult, bytes]:
    """One instance to its end and its patch; every failure becomes an error result,
    never an exception."""
    image = image_for(instance, options.image_template)
    result = InstanceResult(
        instance_id=instance.instance_id,
        repo=instance.repo,
        difficulty=instance.difficulty,
        image=image,
        status="error",
        worker=f"{socket.gethostname()}/{threading.current_thread().name}",
    )
    started = time.monotonic()
    workspace = workspace_for(
        image,
        run_id,
        hygiene=True,
        session_timeout=options.rollout.session_timeout,
        instance_id=instance.instance_id,
    )
    folder = options.output / "trajectories" / instance.instance_id
    try:
        solution = solve(
            workspace,
            instance.problem_statement.strip(),
            policy_for(instance),
            options.scaling,
            options.rollout,
            folder,
            client,
            cancelled=stopping,
            detect=_regression_ways(instance) if options.scaling.enabled else None,
        )
    except DiskFullError:  # no instance can be recorded: the batch ends, in one line
        raise
    except PolicyError as exc:
        return _failed(result, "model", str(exc), started), b""
    except ImageNotFoundError as exc:
        return _failed(result, "image_missing", str(exc), started), b""
    except Exception as exc:  # whatever one instance meets, the batch goes on
        reason = f"{type(exc).__name__}: {first_line(exc)}"
        return _failed(result, "sandbox", reason, started), b""
    trajectory = solution.trajectory
    result.start = solution.head
    result.rollout_status = trajectory.status
    result.reason = trajectory.reason
    result.turns = trajectory.turns
    result.tokens_used = trajectory.tokens_used
    result.duration_s = round(time.monotonic() - started, 3)
    result.usage, result.usage_by_part = solution.usage, solution.usage_by_part
    result.patch_bytes = len(solution.patch)
    failure = _failure(solution)
    if failure is not None:
        result.error, result.reason = failure
    else:
        result.status = "submitted" if solution.patch else "empty"
    return result, solution.patch


def _run_on_node(
    options: RunOptions, run_id: str, replicas: list[Any], instance: Instance, scratch: Path
) -> tuple[InstanceResult, bytes]:
    """A Ray task's body: the instance on this node, its files written under `scratch`."""
    from cwm_agent.model.replicas import ReplicaPool

    here = options.model_copy(update={"output": scratch})
    client = docker_client()
    # Containers of this run whose owner died here (a worker lost with its raylet).
    remove_leftovers(client, label=f"{BATCH_LABEL}={run_id}")
    if replicas:
        pool = ReplicaPool(replicas)
        policy_for: Callable[[Instance], Any] = lambda _: pool  # noqa: E731
    else:
        policy_for = policy_source(here)
    return _run_instance(instance, here, policy_for, client, run_id, threading.Event())


def _regression_ways(instance: Instance) -> Detector:
    from cwm_agent.swebench.grading import regression_ways  # imports the harness (~1 s)

    return regression_ways(instance)


def _failure(solution: Solution) -> tuple[ErrorKind, str | None] | None:
    """The infrastructure failure that left no outcome (so `--resume` retries it):
    the rollout's, or with test-time scaling, every candidate's."""
    report = solution.report
    if report is None:
        failed = [(solution.trajectory.status, solution.trajectory.reason)]
    else:
        failed = [(c.status, c.reason) for c in report.candidates]
    if any(status not in ("error", "failed") for status, _ in failed):
        return None
    reason = failed[0][1]
    model = any((r or "").startswith(("model:", "PolicyError")) for _, r in failed)
    return ("model" if model else "sandbox"), reason


def _failed(result: InstanceResult, kind: ErrorKind, reason: str, started: float) -> InstanceResult:
    result.error, result.reason = kind, reason
    result.duration_s = round(time.monotonic() - started, 3)
    return result


def _open_record(options: RunOptions) -> RunRecord:
    """A new run needs an empty --output; --resume needs the same model as before."""
    output = options.output
    path = output / "run.json"
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if not options.resume:
            raise SwebenchError(
                f"--output {output} is not empty: add --resume to continue that run, "
                "or choose a new folder"
            )
        if not path.is_file():
            raise SwebenchError(f"--resume: {output} holds no run.json, so it is not a run")
        try:
            record = RunRecord.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValidationError) as exc:
            raise SwebenchError(f"--resume: {path} is unreadable: {first_line(exc)}") from None
        if (dataset_key(record.options.dataset), record.options.split) != (
            dataset_key(options.dataset),
            options.split,
        ):
            raise SwebenchError(
                f"--resume: {output} was run on --dataset {record.options.dataset} "
                f"(split {record.options.split}), not {options.dataset} (split {options.split}): "
                "one predictions file holds one dataset's instances"
            )
        if str(record.options.model) != str(options.model):
            raise SwebenchError(
                f"--resume: {output} was run with --model {record.options.model}, "
                f"not {options.model}: one predictions file holds one model's patches"
            )
        return record  # keeps the first session's options; each session records its own
    output.mkdir(parents=True, exist_ok=True)
    if options.settings:  # `--config RUN/config.toml` repeats the run
        (output / "config.toml").write_text(toml_config.dumps(options.settings), encoding="utf-8")
    return RunRecord(cwm_agent_version=_version("cwm-agent"), versions=_versions(), options=options)


def dataset_key(name: str) -> str:
    """The same dataset however it was named: a file by its real path, a hub alias by name."""
    path = Path(name)
    return str(path.resolve()) if path.is_file() else ALIASES.get(name.lower(), name)


def _check_rows(record: RunRecord, instances: list[Instance]) -> None:
    """Refuse to resume on rows that changed since the run began; remember new ones."""
    for instance in instances:
        fingerprint = hashlib.sha256(
            json.dumps(instance.row(), sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        known = record.rows.setdefault(instance.instance_id, fingerprint)
        if known != fingerprint:
            raise SwebenchError(
                f"--resume: the row of {instance.instance_id} changed since the run began: "
                "resume with the dataset it was started with, or start a new --output"
            )


def _write_record(output: Path, record: RunRecord) -> None:
    write_json(output / "run.json", record)


def _versions() -> dict[str, str]:
    packages = ("swebench", "docker", "transformers", "torch", "datasets")
    return {"python": platform.python_version(), **{p: _version(p) for p in packages}}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
