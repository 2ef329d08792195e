"""Test-time scaling for one task: K candidate rollouts, M test-generation
rollouts, the tests run, one candidate selected (docs/protocol.md §7 and §8).

Every piece of work is a thread that waits for what it needs and then takes
one of `jobs` container slots, so work overlaps as far as its dependencies
allow: the rollouts run together (an in-process model batches their
requests), the regression baseline runs on the original code meanwhile, the
generated tests are checked once the test-generation rollouts end, and the
candidates are tested once all have ended.

Test work follows what is distinct, not K times M: candidates are grouped by their
normalised patch (worked out for all of them in one container) and each group
is tested once, in its own container; generated tests of the same normalised
source run once and count as many; and a tree's generated tests share one
interpreter (`batch`). A failure in one piece is recorded on it; the others go on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from cwm_agent.agent import RolloutConfig, Trajectory, run_rollout
from cwm_agent.atomic_write import write_atomically, write_json
from cwm_agent.errors import first_line
from cwm_agent.model import PolicyPool
from cwm_agent.sandbox import LABEL, Sandbox, SandboxInterrupted, teardown
from cwm_agent.tools import Toolbox
from cwm_agent.tts import batch, generated, regression
from cwm_agent.tts.options import TTSOptions
from cwm_agent.tts.regression import RegressionPlan
from cwm_agent.tts.report import (
    CandidateReport,
    GeneratedTestReport,
    GroupReport,
    TestingCost,
    TTSReport,
)
from cwm_agent.tts.selection import Decision, Entry, normalized_key, select_candidate
from cwm_agent.workspace import CommandRun, StartSandbox, Workspace

Progress = Callable[[str], None]


@dataclass
class _Rollout:
    name: str
    trajectory: Trajectory | None
    error: str | None

    @property
    def status(self) -> str:
        return "failed" if self.trajectory is None else self.trajectory.status

    @property
    def reason(self) -> str | None:
        return self.error if self.trajectory is None else self.trajectory.reason

    @property
    def submission(self) -> bytes:
        return b"" if self.trajectory is None else self.trajectory.submission_bytes or b""


@dataclass
class _Kept:
    """Generated tests after the checks: report per test, the sources kept, and
    the kept tests that run, each with the tests of the same source it stands for."""

    reports: list[GeneratedTestReport]
    sources: dict[int, bytes]
    distinct: dict[int, list[int]]


@dataclass
class _Outcome:
    """What one distinct patch's tests gave; every candidate of its group shares it."""

    regression: dict[str, bool]
    regression_s: float = 0.0
    regression_exit_code: int | None = None
    generated: dict[int, bool] = field(default_factory=dict)
    apply_error: str | None = None
    failure: str | None = None


class TTSRun:
    """One task's test-time scaling: `run()` does K + M rollouts, tests the
    candidates, selects one, and returns the report `DIR/tts.json` holds."""

    def __init__(
        self,
        workspace: Workspace,
        issue: str,
        pool: PolicyPool,
        options: TTSOptions,
        rollout: RolloutConfig,
        output: Path,
        client: docker.DockerClient,
        progress: Progress | None = None,
        cancelled: threading.Event | None = None,
        detect: regression.Detector | None = None,
    ) -> None:
        self.workspace, self.issue, self.pool = workspace, issue, pool
        # The ways to run the regression tests: a benchmark row's, else the repository's.
        self.detect = detect or (lambda tree: regression.detect(tree, options.test_cmd))
        self.way: regression.Method | None = None  # the one the plan uses
        self.options, self.rollout = options, rollout
        self.output, self.client = output, client
        self.progress = progress or (lambda _line: None)
        self.slots = threading.BoundedSemaphore(options.jobs)
        self.cancelled = cancelled or threading.Event()  # set: start no more work
        self.started = time.monotonic()
        self.phases: dict[str, float] = {}
        self.start: str | None = None
        self.live: set[Sandbox] = set()  # containers open now, removed at once on interrupt
        self.cost = TestingCost()  # of the test phase, counted as it goes
        self.counting = threading.Lock()

    def run(self) -> TTSReport:
        k, m = self.options.samples, self.options.test_samples
        teardown.install_signal_handlers()
        with ThreadPoolExecutor(max_workers=2 * k + m + 3) as pool:
            started: list[Future[Any]] = []

            def start(piece: Callable[..., Any], *args: Any) -> Future[Any]:
                started.append(pool.submit(piece, *args))
                return started[-1]

            try:
                baseline = start(self._baseline)  # first in line for a container
                candidates = [start(self._rollout, "candidate", i) for i in range(k)]
                tests = [start(self._rollout, "testgen", j) for j in range(m)]
                plan = start(self._plan, baseline, candidates)
                kept = start(self._check_tests, tests)
                reports = start(self._group, candidates).result()
                groups: dict[int, list[int]] = {}
                for report in reports:
                    if report.tested_as is not None:
                        groups.setdefault(report.tested_as, []).append(report.index)
                outcomes = {
                    first: start(self._evaluate, reports[first].patch, plan, kept)
                    for first in groups
                }
                for first, members in groups.items():
                    _share(outcomes[first].result(), [reports[i] for i in members])
                    self.progress(f"candidate-{first} tested, for candidates {members}")
            except BaseException:  # Ctrl-C or SIGTERM: stop starting work, remove containers
                self.cancelled.set()
                pool.shutdown(wait=False, cancel_futures=True)
                pending = set(started)
                while pending:  # this run's containers only, also those still being made
                    for box in list(self.live):
                        box.close()
                    pending = wait(pending, timeout=0.5).not_done
                raise
            return self._decide(reports, kept.result(), plan.result())

    # -- pieces --------------------------------------------------------------

    @contextmanager
    def _tree(self, name: str, testing: bool = True) -> Iterator[StartSandbox]:
        """A fresh start-state container, once a slot is free (counted as the
        test phase's unless it holds a rollout)."""
        with self.slots:
            if self.cancelled.is_set():
                raise SandboxInterrupted("test-time scaling was interrupted")
            if testing:
                self._count(containers=1)
            opened = time.monotonic()
            try:
                with self.workspace.open(self.client, {f"{LABEL}.role": name}) as start:
                    self.live.add(start.box)
                    try:
                        yield start
                    finally:
                        self.live.discard(start.box)
            finally:
                if testing:
                    self._count(container_s=time.monotonic() - opened)

    def _count(self, **more: float) -> None:
        with self.counting:
            for name, count in more.items():
                setattr(self.cost, name, getattr(self.cost, name) + count)

    def _ran(self, done: batch.Batch) -> dict[int, CommandRun]:
        """A batch's runs, its cost counted."""
        self._count(test_executions=len(done.runs), interpreter_starts=done.interpreter_starts)
        if done.fallback is not None:
            with self.counting:
                self.cost.fallbacks.append(done.fallback)
            self.progress(f"generated tests run one at a time: {done.fallback}")
        return done.runs

    def _regression(self, tree: StartSandbox, command: str, limit: float) -> CommandRun:
        self._count(test_executions=1, interpreter_starts=1)
        return tree.run(command, limit)

    def _phase(self, name: str) -> None:
        self.phases[name] = round(time.monotonic() - self.started, 3)

    def _rollout(self, role: str, index: int) -> _Rollout:
        name = f"{role}-{index}"
        task = "issue" if role == "candidate" else "testgen"
        config = self.rollout.model_copy(update={"task": task, "repo_root": self.workspace.workdir})
        folder = self.output / ("candidates" if role == "candidate" else "testgen") / name
        try:
            with self._tree(name, testing=False) as tree, self.pool.rollout(name) as policy:
                toolbox = Toolbox(tree.box, "patch" if role == "candidate" else "test")
                trajectory = run_rollout(policy, toolbox, self.issue, config)
        except Exception as exc:  # the policy or container could not even start
            self.progress(f"{name} failed: {first_line(exc)}")
            return _Rollout(name, None, f"{type(exc).__name__}: {first_line(exc)}")
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "trajectory.json", trajectory, newline=False)
        submitted = trajectory.submission_bytes or b""
        write_atomically(
            folder / ("patch.diff" if role == "candidate" else generated.TEST_FILE), submitted
        )
        self.progress(f"{name}: {trajectory.status} after {trajectory.turns} turns")
        return _Rollout(name, trajectory, None)

    def _baseline(self) -> tuple[RegressionPlan, regression.Method | None]:
        """The ways to run the repository's tests, tried on the original code in
        order until one has passing tests; with the way that timed out, if any."""
        plan, slow = RegressionPlan(), None
        started = time.monotonic()
        try:
            with self._tree("original") as tree:
                self.start = tree.head
                for way in self.detect(tree):
                    if isinstance(way, regression.Refused):
                        plan.attempts.append(
                            regression.Attempt(method=way.name, why=way.why, status="refused")
                        )
                        self.progress(f"regression tests: {way.name} refused: {way.why}")
                        continue
                    run = self._regression(tree, way.command, self.options.regression_timeout)
                    status = self._try(plan, way, run, "on the original code")
                    if status == "ok":
                        break
                    self.progress(f"regression tests: {way.name} gave {status}, trying the next")
                    slow = slow or (way if status == "timed-out" else None)
        except Exception as exc:
            plan.why = f"the baseline could not run: {type(exc).__name__}: {first_line(exc)}"
        plan.baseline_s = round(time.monotonic() - started, 3)
        if plan.status != "ok" and plan.attempts:
            plan.why = "no way of running the tests gave a test passing on the original code"
        self._phase("baseline")
        return plan, slow

    def _try(
        self, plan: RegressionPlan, way: regression.Method, run: CommandRun, note: str
    ) -> regression.Status:
        """Record what `run` of `way` says; with tests passing, make it the plan."""
        status, outcomes = regression.judge(way, run)
        tests = sorted(test for test, passed in outcomes.items() if passed)
        plan.attempts.append(regression.attempt(way, run, status, len(tests)))
        if status != "ok":
            return status
        self.way = way
        plan.status, plan.method, plan.why, plan.runner = "ok", way.name, way.why, way.runner
        plan.command, plan.tests = way.command, tests
        plan.candidate_command = way.command if way.only is None else way.only(tests)
        self.progress(
            f"regression tests: {way.name}: {len(tests)} passing of {len(outcomes)} ({note}): "
            f"{way.command}"
        )
        return status

    def _plan(
        self,
        baseline: Future[tuple[RegressionPlan, regression.Method | None]],
        candidates: list[Future[_Rollout]],
    ) -> RegressionPlan:
        """The regression tests every candidate runs: those passing on the original;
        a suite that timed out everywhere, narrowed to the changed modules' tests."""
        plan, slow = baseline.result()
        if plan.status == "ok" or slow is None:
            return plan
        limit = self.options.regression_timeout
        patches = [future.result().submission for future in candidates]
        started = time.monotonic()
        try:
            with self._tree("original-narrowed") as tree:
                found = regression.narrowed(tree, slow, patches)
                if found is None:
                    plan.why += f"; {slow.name} ran over {limit:.0f}s, nothing narrower was found"
                    return plan
                way, plan.narrowed_to = found
                run = self._regression(tree, way.command, limit)
        except Exception as exc:
            plan.why += f"; narrowing failed: {type(exc).__name__}: {first_line(exc)}"
            return plan
        plan.baseline_s = round(plan.baseline_s + time.monotonic() - started, 3)
        self._try(plan, way, run, f"narrowed to {len(plan.narrowed_to)} test files")
        return plan

    def _check_tests(self, rollouts: list[Future[_Rollout]]) -> _Kept:
        """Keep the generated tests that parse, speak the markers and reproduce the
        issue; each distinct source is run once, for all its copies."""
        reports, candidates = [], {}
        for index, future in enumerate(rollouts):
            rollout = future.result()
            report = GeneratedTestReport(
                index=index,
                status=rollout.status,
                reason=rollout.reason,
                trajectory=f"testgen/{rollout.name}/trajectory.json",
            )
            source = rollout.submission
            problem = (
                "submitted no test"
                if not source
                else generated.static_problem(source.decode("utf-8", "replace"))
            )
            if problem is None:
                candidates[index] = source
            report.dropped_because = problem
            reports.append(report)
        self._phase("test-generation")
        distinct = generated.distinct(candidates)
        for first, copies in distinct.items():
            for copy in copies[1:]:
                reports[copy].duplicate_of = first
        kept: dict[int, list[int]] = {}
        if distinct:
            try:
                with self._tree("original-tests") as tree:
                    runs = self._ran(
                        batch.run_tests(
                            tree,
                            {first: candidates[first] for first in distinct},
                            self.options.test_timeout,
                        )
                    )
                for first, run in runs.items():
                    problem = generated.reproduction_problem(run)
                    for copy in distinct[first]:
                        reports[copy].original_output = run.output[-2000:]
                        reports[copy].dropped_because = problem
                    if problem is None:
                        kept[first] = distinct[first]
            except Exception as exc:
                for index in candidates:
                    reports[index].dropped_because = f"could not run: {first_line(exc)}"
        sources = {copy: candidates[copy] for copies in kept.values() for copy in copies}
        for report in reports:
            report.kept = report.index in sources
        self._phase("test-checks")
        return _Kept(reports, sources, kept)

    def _group(self, rollouts: list[Future[_Rollout]]) -> list[CandidateReport]:
        """Every candidate's report, its patch checked and fingerprinted (all of
        them in one container) and, when it can be tested, the candidate of its
        patch group that will be: the lowest numbered."""
        reports = [_candidate(index, future.result()) for index, future in enumerate(rollouts)]
        submitted = [r for r in reports if r.why_not is None]
        found: dict[str, dict[str, bytes | None] | str] = {}
        if submitted:
            try:
                with self._tree("grouping") as tree:
                    for r in submitted:
                        if r.patch not in found:
                            raw = r.patch.encode("utf-8", "surrogateescape")
                            found[r.patch] = tree.patched(raw, regression.changed_files(raw))
            except Exception as exc:
                for r in submitted:
                    r.status, r.why_not = "failed", f"testing failed: {first_line(exc)}"
                return reports
        first_of: dict[str, int] = {}
        for r in submitted:
            contents = found[r.patch]
            r.applies = not isinstance(contents, str)
            if isinstance(contents, str):
                r.apply_error, r.why_not = contents, "the patch does not apply"
                continue
            r.key = normalized_key(contents)
            r.tested_as = first_of.setdefault(r.key, r.index)
        return reports

    def _evaluate(
        self, patch: str, plan_future: Future[RegressionPlan], kept_future: Future[_Kept]
    ) -> _Outcome:
        """Apply one distinct patch in its own container and run every test on it."""
        plan, kept = plan_future.result(), kept_future.result()
        outcome = _Outcome(regression={})
        try:
            with self._tree("tests") as tree:
                outcome.apply_error = tree.apply(patch.encode("utf-8", "surrogateescape"))
                if outcome.apply_error is not None:
                    return outcome
                if plan.candidate_command is not None and plan.tests:
                    limit = self.options.regression_timeout * 1.5
                    run = self._regression(tree, plan.candidate_command, limit)
                    outcome.regression_s, outcome.regression_exit_code = (
                        run.duration_s,
                        run.exit_code,
                    )
                    outcomes = {} if self.way is None else self.way.outcomes(run)
                    outcome.regression = {test: outcomes.get(test, False) for test in plan.tests}
                sources = {first: kept.sources[first] for first in kept.distinct}
                runs = self._ran(batch.run_tests(tree, sources, self.options.test_timeout))
                outcome.generated = {
                    copy: generated.passes(runs[first])
                    for first, copies in kept.distinct.items()
                    for copy in copies
                }
        except Exception as exc:
            outcome.failure = f"testing failed: {first_line(exc)}"
        return outcome

    # -- decision ------------------------------------------------------------

    def _decide(
        self, candidates: list[CandidateReport], kept: _Kept, plan: RegressionPlan
    ) -> TTSReport:
        self._phase("candidate-tests")
        groups, decision = decide(candidates, kept.sources)
        for rank, group in enumerate(groups):
            for test in group.tests:
                kept.reports[test].group, kept.reports[test].in_top_groups = rank, True
        report = TTSReport(
            options=self.options,
            candidates=candidates,
            generated_tests=kept.reports,
            groups=[
                GroupReport(rank=r, tests=list(g.tests), resolved_by=sorted(g.resolved_by))
                for r, g in enumerate(groups)
            ],
            regression=plan,
            start=self.start,
            selected=decision.selected,
            decision=decision.reason,
            duration_s=round(time.monotonic() - self.started, 3),
            phases_s=self.phases,
            testing=self.cost,
        )
        self.output.mkdir(parents=True, exist_ok=True)
        write_json(self.output / "tts.json", report.model_dump())
        return report


def decide(
    candidates: list[CandidateReport], kept: Iterable[int]
) -> tuple[list[generated.BehaviourGroup], Decision]:
    """The recipe's end (docs/protocol.md §8): the `kept` tests' top-5 majority
    groups, each eligible candidate's score, votes and patch group, the choice."""
    eligible = [c for c in candidates if c.eligible]
    resolved_by = {
        test: frozenset(c.index for c in eligible if c.generated.get(test)) for test in kept
    }
    groups = generated.majority_groups(resolved_by)
    top = set(generated.selected_tests(groups))
    entries = []
    for c in eligible:
        c.score = sum(c.regression.values()) + sum(
            passed for test, passed in c.generated.items() if test in top
        )
        entries.append(Entry(c.index, c.score, c.key or "", c.tokens))
    decision = select_candidate(entries)
    for c in eligible:
        c.votes = decision.votes[c.key or ""]
        c.group_of_patch = [o.index for o in eligible if o.key == c.key]
    return groups, decision


def _candidate(index: int, rollout: _Rollout) -> CandidateReport:
    """A candidate's report before testing; `why_not` set when it cannot be tested."""
    trajectory = rollout.trajectory
    report = CandidateReport(
        index=index,
        status=rollout.status,
        reason=rollout.reason,
        turns=0 if trajectory is None else trajectory.turns,
        tokens=0 if trajectory is None else trajectory.tokens_used,
        patch=rollout.submission.decode("utf-8", "surrogateescape"),
        trajectory=f"candidates/{rollout.name}/trajectory.json",
    )
    if trajectory is None or trajectory.status == "error":
        report.why_not = "the rollout failed"
    elif not rollout.submission:
        report.why_not = "no patch submitted"
    return report


def _share(outcome: _Outcome, members: list[CandidateReport]) -> None:
    """Give every candidate of a patch group the outcomes of the one tested."""
    for report in members:
        if outcome.failure is not None:
            report.status, report.why_not = "failed", outcome.failure
        elif outcome.apply_error is not None:
            report.applies, report.apply_error = False, outcome.apply_error
            report.why_not = "the patch does not apply"
        else:
            report.regression = dict(outcome.regression)
            report.regression_s = outcome.regression_s
            report.regression_exit_code = outcome.regression_exit_code
            report.generated = dict(outcome.generated)
            report.eligible = True


def selected_candidate(report: TTSReport, output: Path) -> tuple[Trajectory, bytes, str | None]:
    """The selected candidate's trajectory, patch and apply error; with none
    selected, the first candidate's trajectory stands for the run, with no patch."""
    candidate = report.candidates[0 if report.selected is None else report.selected]
    patch = b"" if report.selected is None else candidate.patch.encode("utf-8", "surrogateescape")
    path = output / candidate.trajectory
    if path.exists():
        trajectory = Trajectory.model_validate_json(path.read_bytes())
    else:  # the rollout never started
        trajectory = Trajectory(
            task="issue",
            model="",
            config={},
            issue="",
            started_at="",
            status="error",
            reason=candidate.reason,
        )
    return trajectory, patch, candidate.apply_error
