"""One task, from its start state to a patch: one rollout, or test-time scaling.

`fix`, SWE-bench runs and the CI bot differ in where the start state comes
from and what happens to the patch; producing the patch is this one function.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import docker

from cwm_agent.agent import MessageObserver, RolloutConfig, Trajectory, Usage, run_rollout
from cwm_agent.atomic_write import write_atomically, write_json
from cwm_agent.model import PolicyPool
from cwm_agent.sandbox.container import require_image
from cwm_agent.tools import Toolbox
from cwm_agent.tts import TTSOptions, TTSReport, TTSRun, selected_candidate
from cwm_agent.tts.pipeline import Progress
from cwm_agent.tts.regression import Detector
from cwm_agent.workspace import Workspace


@dataclass(frozen=True)
class Solution:
    """The patch and where it came from; `output` holds patch.diff and trajectory.json."""

    head: str  # the start commit inside the sandbox
    trajectory: Trajectory  # the patch's rollout (test-time scaling: the selected, or the first)
    patch: bytes
    patch_error: str | None  # why it does not apply (for a snapshot, its caller checks)
    report: TTSReport | None  # test-time scaling's, when it ran
    usage: Usage  # every rollout's and test run's, test-time scaling's included
    usage_by_part: dict[str, Usage] | None  # test-time scaling: candidates, testgen, tests

    @property
    def done(self) -> bool:
        """The run stands behind its patch: a finished rollout's, or the candidate
        test-time scaling selected (finished or not, it passed the most tests)."""
        if self.report is not None:
            return self.report.selected is not None
        return self.trajectory.status == "finished"


def solve(
    workspace: Workspace,
    issue: str,
    pool: PolicyPool,
    scaling: TTSOptions,
    rollout: RolloutConfig,
    output: Path,
    client: docker.DockerClient,
    observer: MessageObserver | None = None,
    progress: Progress | None = None,
    cancelled: threading.Event | None = None,
    detect: Detector | None = None,
) -> Solution:
    """Run the task and write `output/patch.diff` and `output/trajectory.json`;
    `detect` gives the ways to run regression tests (default: the repository's)."""
    require_image(client, workspace.image)
    rollout = rollout.model_copy(update={"repo_root": workspace.workdir})
    report: TTSReport | None = None
    if scaling.enabled:
        run = TTSRun(
            workspace, issue, pool, scaling, rollout, output, client, progress, cancelled, detect
        )
        report = run.run()
        trajectory, patch, patch_error = selected_candidate(report, output)
        head = report.start or ""
    else:

        def checkpoint(partial: Trajectory) -> None:
            output.mkdir(parents=True, exist_ok=True)  # once the sandbox is up
            write_json(output / "trajectory.json", partial, newline=False)

        with workspace.open(client) as start, pool.rollout("candidate-0") as policy:
            toolbox = Toolbox(start.box)
            trajectory = run_rollout(policy, toolbox, issue, rollout, observer, checkpoint)
            patch = trajectory.submission_bytes or b""
            # A snapshot's caller holds the repository and checks the patch against it.
            inside = workspace.snapshot is None
            patch_error = start.check(patch) if patch and inside else None
        head = start.head
    output.mkdir(parents=True, exist_ok=True)
    write_atomically(output / "patch.diff", patch)
    if report is not None:  # a single rollout's checkpoint has written its own
        write_json(output / "trajectory.json", trajectory, newline=False)
    if report is None:
        return Solution(head, trajectory, patch, patch_error, None, Usage.of(trajectory), None)
    parts = usage_by_part(report, output)
    total = sum(parts.values(), Usage())
    return Solution(head, trajectory, patch, patch_error, report, total, parts)


def usage_by_part(report: TTSReport, output: Path) -> dict[str, Usage]:
    """Test-time scaling's cost split three ways: the candidate rollouts, the
    test-generation rollouts (each from its trajectory, as tts.json points to it),
    and testing (the seconds its containers were open, as tts.json sums them)."""

    def rollouts(paths: list[str]) -> Usage:
        total = Usage()
        for path in paths:
            if (output / path).is_file():  # a rollout that failed to start wrote none
                total += Usage.of(Trajectory.model_validate_json((output / path).read_bytes()))
        return total

    return {
        "candidates": rollouts([c.trajectory for c in report.candidates]),
        "testgen": rollouts([t.trajectory for t in report.generated_tests]),
        "tests": Usage(sandbox_s=round(report.testing.container_s, 3)),
    }
