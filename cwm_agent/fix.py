"""`cwm-agent fix`: one rollout on a repository, from its HEAD to a checked patch.

The user's repository is only read (a `git archive` of the start commit goes
into the sandbox) until the end, when `--branch` adds a commit and a ref
through git's object store; its working tree, index and stash stay untouched.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import git
from pydantic import BaseModel, Field

from cwm_agent import gitrepo
from cwm_agent.agent import MessageObserver, RolloutConfig, Trajectory, Usage
from cwm_agent.atomic_write import write_json
from cwm_agent.errors import UserError
from cwm_agent.model import ModelSpec, PolicyPool
from cwm_agent.sandbox import (
    LABEL,
    WORKDIR,
    SandboxInterrupted,
    daemon,
    docker_client,
    remove_leftovers,
    teardown,
)
from cwm_agent.sandbox.image import DEFAULT_IMAGE, ensure_image
from cwm_agent.solve import Solution, solve
from cwm_agent.tts import TTSOptions, TTSReport
from cwm_agent.workspace import Workspace

AGAIN = "run fix again"  # what to do once a lost Docker daemon is back


class FixError(UserError):
    """Bad input to `fix`; the message is meant for users."""


class FixOptions(BaseModel):
    """Everything `cwm-agent fix` was asked to do, validated before any work starts."""

    repo: Path | None = None
    issue: str
    model: ModelSpec
    image: str = DEFAULT_IMAGE
    workdir: str = WORKDIR
    output: Path | None = None
    branch: str | None = None
    include_uncommitted: bool = False
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    scaling: TTSOptions = Field(
        default_factory=TTSOptions, description="K=1, M=0: one rollout, no tests"
    )


class PatchStats(BaseModel):
    files: int = 0
    additions: int = 0
    deletions: int = 0
    bytes: int = 0


class FixResult(BaseModel):
    """`result.json`: the outcome, in a form scripts can rely on."""

    status: str
    reason: str | None
    success: bool
    turns: int
    tokens_used: int
    duration_s: float
    usage: Usage = Field(description="tokens and model/sandbox seconds, every rollout's")
    usage_by_part: dict[str, Usage] | None = Field(
        None, description="test-time scaling: candidates, testgen, tests"
    )
    model: str
    image: str
    start: str
    start_commit: str = Field(description="the commit the patch applies to")
    patch_submitted: bool
    patch_applies: bool | None
    patch_error: str | None = None
    patch_stats: PatchStats
    branch: str | None = None
    branch_commit: str | None = None
    output_dir: str
    submodules_omitted: list[str] = Field(
        default_factory=list, description="submodule paths the sandbox did not get"
    )
    selected: int | None = Field(None, description="test-time scaling: the chosen candidate")
    decision: str | None = Field(None, description="test-time scaling: why it was chosen")


@dataclass(frozen=True)
class FixRun:
    """What `run_fix` hands its caller, so nothing needs reading back from the
    files it wrote: `result.json`'s outcome, the patch and the rollout it came
    from, and test-time scaling's report (every candidate, the selection and why)."""

    result: FixResult
    patch: bytes
    trajectory: Trajectory
    scaling: TTSReport | None

    @property
    def summary(self) -> str:
        """The model's summary of its work; empty unless its rollout finished."""
        return final_summary(self.trajectory) if self.trajectory.status == "finished" else ""


def run_fix(
    options: FixOptions,
    observer: MessageObserver | None = None,
    progress: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> FixRun:
    """Validate, run one rollout in a fresh sandbox, write the outputs, check the patch.

    An interrupt (Ctrl-C, SIGTERM) still leaves `result.json`, saying `interrupted`,
    beside the trajectory so far."""
    issue = options.issue.strip()
    if not issue:
        raise FixError("the issue is empty: pass --issue TEXT or --issue-file FILE with text")
    pool = PolicyPool(options.model)
    if options.scaling.enabled and pool.replay_dir is not None and not pool.replay_dir.is_dir():
        raise FixError(
            f"{options.model}: with --samples/--test-samples, replay: needs a directory "
            "holding candidate-0.json … and testgen-0.json …"
        )
    repo = gitrepo.open_repo(options.repo) if options.repo is not None else None
    if options.branch is not None:
        if repo is None:
            raise FixError("--branch needs --repo: the branch is made in your repository")
        gitrepo.ensure_new_branch(repo, options.branch)
    output = _output_dir(options.output)
    teardown.install_signal_handlers()  # SIGTERM unwinds like Ctrl-C from here on
    try:
        return _fix(options, issue, pool, repo, output, observer, progress, warn)
    except (KeyboardInterrupt, SandboxInterrupted) as exc:
        reason = f"interrupted ({str(exc) or 'Ctrl-C'}): nothing was committed"
        _write_result(output, _unfinished(options, pool.name, output, "interrupted", reason))
        raise
    except daemon.DockerLostError as exc:
        _write_result(output, _unfinished(options, pool.name, output, "error", str(exc)))
        raise


def _fix(
    options: FixOptions,
    issue: str,
    pool: PolicyPool,
    repo: git.Repo | None,
    output: Path,
    observer: MessageObserver | None,
    progress: Callable[[str], None] | None,
    warn: Callable[[str], None] | None,
) -> FixRun:
    client = docker_client()
    remove_leftovers(client, label=f"{LABEL}.job=fix")  # of runs killed while creating one
    ensure_image(client, options.image, progress)
    snapshot = _snapshot(repo, options.include_uncommitted, warn)
    workspace = Workspace(
        image=options.image,
        workdir=options.workdir,
        snapshot=snapshot.tar if snapshot is not None else None,
        session_timeout=options.rollout.session_timeout,
        labels={f"{LABEL}.job": "fix"},
    )
    try:
        solution = solve(
            workspace,
            issue,
            pool,
            options.scaling,
            options.rollout,
            output,
            client,
            observer,
            progress,
        )
    except daemon.LOST_ERRORS:
        daemon.check(AGAIN)
        raise
    if solution.trajectory.status == "error":  # perhaps the daemon went under the rollout
        daemon.check(AGAIN)
    patch_error = solution.patch_error
    if solution.patch and snapshot is not None:
        assert repo is not None
        patch_error = gitrepo.check_patch(repo, snapshot.commit, solution.patch)
    branch_commit = None
    if solution.patch and patch_error is None and options.branch is not None and solution.done:
        assert repo is not None and snapshot is not None  # --branch needs --repo
        branch_commit = gitrepo.commit_on_branch(
            repo,
            snapshot.commit,
            solution.patch,
            options.branch,
            commit_message(solution.trajectory),
        )
    result = _result(options, pool.name, snapshot, solution, patch_error, branch_commit, output)
    _write_result(output, result)
    return FixRun(result, solution.patch, solution.trajectory, solution.report)


def _snapshot(
    repo: git.Repo | None, include_uncommitted: bool, warn: Callable[[str], None] | None
) -> gitrepo.Snapshot | None:
    """The start state taken from the user's repository, if one was given; says
    which submodules stay behind."""
    if repo is None:
        return None
    snapshot = gitrepo.snapshot(repo, include_uncommitted)
    omitted = snapshot.submodules
    if omitted and warn is not None:
        warn(
            f"{len(omitted)} submodule(s) are not carried into the sandbox: "
            f"{', '.join(omitted[:5])}{' …' if len(omitted) > 5 else ''}"
        )
    return snapshot


def _result(
    options: FixOptions,
    model: str,
    snapshot: gitrepo.Snapshot | None,
    solution: Solution,
    patch_error: str | None,
    branch_commit: str | None,
    output: Path,
) -> FixResult:
    """`result.json` of a run that ended: the outcome, the start, the patch's fate."""
    trajectory, patch, report = solution.trajectory, solution.patch, solution.report
    if snapshot is not None:
        start, start_commit = snapshot.description, snapshot.commit
    else:
        start = f"{options.image}:{options.workdir} at {solution.head[:12]}"
        start_commit = solution.head
    status, reason = trajectory.status, trajectory.reason
    if report is not None and report.selected is None:
        status, reason = "unresolved", report.decision
    return FixResult(
        status=status,
        reason=reason,
        success=solution.done and bool(patch) and patch_error is None,
        turns=trajectory.turns,
        tokens_used=trajectory.tokens_used,
        duration_s=round(trajectory.duration_s if report is None else report.duration_s, 3),
        usage=solution.usage,
        usage_by_part=solution.usage_by_part,
        model=model,
        image=options.image,
        start=start,
        start_commit=start_commit,
        patch_submitted=bool(patch),
        patch_applies=None if not patch else patch_error is None,
        patch_error=patch_error,
        patch_stats=patch_stats(patch.decode("utf-8", "surrogateescape")),
        branch=options.branch if branch_commit else None,
        branch_commit=branch_commit,
        output_dir=str(output),
        submodules_omitted=snapshot.submodules if snapshot is not None else [],
        selected=None if report is None else report.selected,
        decision=None if report is None else report.decision,
    )


def _unfinished(
    options: FixOptions, model: str, output: Path, status: str, reason: str
) -> FixResult:
    """What a run cut short (interrupted, or its daemon lost) had done, from the
    trajectory it checkpointed."""
    try:
        trajectory: Trajectory | None = Trajectory.model_validate_json(
            (output / "trajectory.json").read_bytes()
        )
    except (OSError, ValueError):
        trajectory = None
    return FixResult(
        status=status,
        reason=reason,
        success=False,
        turns=trajectory.turns if trajectory else 0,
        tokens_used=trajectory.tokens_used if trajectory else 0,
        duration_s=round(trajectory.duration_s, 3) if trajectory else 0.0,
        usage=Usage.of(trajectory) if trajectory else Usage(),
        model=model,
        image=options.image,
        start="",
        start_commit="",
        patch_submitted=bool(trajectory and trajectory.submission),
        patch_applies=None,
        patch_stats=PatchStats(),
        output_dir=str(output),
    )


def _write_result(output: Path, result: FixResult) -> None:
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "result.json", result.model_dump())


def patch_stats(patch: str) -> PatchStats:
    """Files and changed lines; only lines inside hunks count, so a removed
    `-- comment` line is a deletion and not a file header."""
    stats = PatchStats(bytes=len(patch.encode("utf-8", "surrogateescape")))
    in_hunk = False
    for line in patch.splitlines():
        if line.startswith("diff --git "):
            stats.files += 1
            in_hunk = False
        elif line.startswith("@@"):
            in_hunk = True
        elif in_hunk and line.startswith("+"):
            stats.additions += 1
        elif in_hunk and line.startswith("-"):
            stats.deletions += 1
    return stats


def _output_dir(requested: Path | None) -> Path:
    """A folder that is new or empty and that can be written: a run never overwrites
    what an earlier one wrote, nor finds out at its end that it cannot save its work.
    Folders made for the check are removed again, so bad input leaves nothing."""
    if requested is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        requested = Path("cwm-agent-runs") / f"{stamp}-{uuid.uuid4().hex[:6]}"
    if requested.exists() and (not requested.is_dir() or any(requested.iterdir())):
        raise FixError(f"--output {requested} exists and is not empty: choose a new folder")
    made = [folder for folder in (requested, *requested.parents) if not folder.exists()]
    try:
        requested.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=requested).close()
    except OSError as exc:
        raise FixError(
            f"--output {requested} cannot be written ({exc.strerror or exc}): "
            "choose a folder you can write to"
        ) from None
    finally:
        for folder in made:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
    return requested


def commit_message(trajectory: Trajectory) -> str:
    """First line of the issue as the subject, the model's summary as the body."""
    subject = re.sub(r"\s+", " ", trajectory.issue.strip().splitlines()[0])[:60]
    return f"cwm-agent: {subject}\n\n{final_summary(trajectory)}\n".rstrip() + "\n"


def final_summary(trajectory: Trajectory) -> str:
    """The model's last reply without its reasoning: its summary of the work."""
    last = next((m.content for m in reversed(trajectory.messages) if m.role == "assistant"), "")
    return last.rpartition("</think>")[2].strip()
