"""Test-time scaling: what running rollouts and tests concurrently buys.

1. Rollouts: K candidate + M test-generation rollouts of a small random CWM
   (CPU) on the clamp example, all at once (`--jobs K+M`: their requests are
   batched through one model) against one after another (`--jobs 1`). The
   random model never calls a tool well, so every turn is a full-length reply
   answered by a format error: the figure is generation plus containers.
2. Test running: the clamp example's replayed rollouts (5 candidates, 4
   generated tests), the phase after the rollouts (checking the generated
   tests, then testing each candidate in its own container) with one
   container at a time against all at once.
3. A real repository's suite (pinned sdists of tests/projects.py): K replayed
   candidates, one breaking a test; the original suite runs once, each
   candidate only the tests that passed there. Per phase, from tts.json: the
   original runs (every way tried) and each candidate's run, all in the
   pipeline beside the other containers; then, alone in one container, the
   whole command (what each candidate ran before) against the candidates' one.

4. `--scale`: CWM's scale, K up to 40 and M up to 40 on sympy, the test phase of
   the old path against the new (benchmarks/tts_scale.py, which takes the rest
   of the arguments).

Run: .venv/bin/python benchmarks/tts.py [--samples 8 --test-samples 8] [--only real]
     .venv/bin/python benchmarks/tts.py --scale [--k 8 16 40] [--m 8 40] [--mix dup distinct]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from generation import small_random_cwm  # type: ignore[import-not-found]

from cwm_agent import gitrepo
from cwm_agent.agent import RolloutConfig
from cwm_agent.model import LoadConfig, ModelSpec, PolicyPool, SamplingConfig
from cwm_agent.sandbox import docker_client
from cwm_agent.tts import TTSOptions, TTSRun
from cwm_agent.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "clamp"
REAL = ("MarkupSafe==2.1.5", "cachetools==5.3.3", "more-itertools==10.2.0")


def workspace_of(source: Path, repo: Path, image: str) -> Workspace:
    """`source` committed as a repository, in a workspace of `image`."""
    subprocess.run(["cp", "-r", str(source), str(repo)], check=True)
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b.invalid", "-C", str(repo)]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "start"]):
        subprocess.run([*git, *args], check=True)
    return Workspace(image=image, snapshot=gitrepo.snapshot(gitrepo.open_repo(repo), False).tar)


def clamp_workspace(root: Path, image: str) -> tuple[Workspace, str]:
    workspace = workspace_of(EXAMPLE / "repo", root / "clamp", image)
    return workspace, (EXAMPLE / "issue.md").read_text()


def real_repositories(root: Path, base: str, samples: int) -> None:
    """Each real project's regression phases with `samples` replayed candidates."""
    sys.path.insert(0, str(ROOT))
    from tests.projects import CASES, build_image

    image = build_image(docker_client(), base, "cwm-agent-bench/pytest:8.3.5", None, root / "ctx")
    print(f"## real repositories: K={samples} replayed candidates, one breaking a test")
    print(
        "| project | method | tests | in the pipeline: original, candidate (mean) "
        "| alone: whole command, candidate command |"
    )
    try:
        for case in (c for c in CASES.values() if c.spec in REAL):
            real_repository(root, image, case, samples)
    finally:
        docker_client().images.remove(image, force=True)


def real_repository(root: Path, image: str, case: Any, samples: int) -> None:
    """One project: its plan, the original run, the candidates' runs, the whole command."""
    from tests.projects import edit_replay, sdist

    name = case.spec.split("==")[0]
    workspace = workspace_of(sdist(case.spec), root / name, image)
    replays = root / f"{name}-replays"
    replays.mkdir()
    for index in range(samples):
        new = case.breaks if index == 0 else f"{case.line.rstrip()}  # {index}\n"
        texts = edit_replay(case.path, case.line, new, "Edit.")
        (replays / f"candidate-{index}.json").write_text(json.dumps(texts))
    options = TTSOptions(samples=samples, jobs=samples + 1)
    out = root / f"{name}-run"
    run = TTSRun(
        workspace,
        "bench",
        PolicyPool(ModelSpec.parse(f"replay:{replays}")),
        options,
        RolloutConfig(max_turns=6),
        out,
        docker_client(),
    )
    report = run.run()
    plan = report.regression
    mean = statistics.mean(c.regression_s for c in report.candidates if c.eligible)
    with workspace.open(docker_client()) as tree:  # one container, nothing beside it
        whole = tree.run(plan.command or "true", 600).duration_s  # what a candidate cost before
        only = tree.run(plan.candidate_command or "true", 600).duration_s
    print(
        f"| {name} | {plan.method} | {len(plan.tests)} | {plan.baseline_s:.1f} s, {mean:.1f} s "
        f"| {whole:.1f} s, {only:.1f} s |"
    )


def timed(
    workspace: Workspace,
    issue: str,
    pool: PolicyPool,
    options: TTSOptions,
    rollout: RolloutConfig,
    out: Path,
) -> tuple[float, dict[str, float]]:
    started = time.monotonic()
    report = TTSRun(workspace, issue, pool, options, rollout, out, docker_client()).run()
    return time.monotonic() - started, report.phases_s


def main() -> None:
    if "--scale" in sys.argv:
        sys.argv.remove("--scale")
        from tts_scale import main as scale  # type: ignore[import-not-found]

        scale()
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--test-samples", type=int, default=8)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--reply-tokens", type=int, default=48)
    parser.add_argument("--image", default="cwm-base:bookworm")
    parser.add_argument("--only", choices=("real",), help="only the real-repository case")
    args = parser.parse_args()
    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix="tts-bench-"))
    workspace, issue = clamp_workspace(root, args.image)
    k, m = args.samples, args.test_samples
    driver = docker_client().info()["Driver"]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {driver}")
    if args.only == "real":
        real_repositories(root, args.image, k)
        return

    model = small_random_cwm(root)
    rollout = RolloutConfig(max_turns=args.turns, max_reply_tokens=args.reply_tokens)
    print(f"## rollouts: K={k}, M={m}, {args.turns} turns of {args.reply_tokens} tokens")
    for jobs in (k + m, 1):
        pool = PolicyPool(
            ModelSpec.parse(str(model), LoadConfig(offline=True), SamplingConfig(greedy=True))
        )
        options = TTSOptions(samples=k, test_samples=m, jobs=jobs)
        seconds, _ = timed(workspace, issue, pool, options, rollout, root / f"rollouts-{jobs}")
        stats = pool.batching.stats if pool.batching else None
        batches = f", {stats.calls} model calls, largest {stats.largest}" if stats else ""
        print(f"jobs={jobs:2d}: {seconds:6.1f} s{batches}")

    print("## test running: clamp replays, K=5, M=4")
    replays = PolicyPool(ModelSpec.parse(f"replay:{EXAMPLE / 'replays'}"))
    for jobs in (9, 1):
        options = TTSOptions(samples=5, test_samples=4, jobs=jobs)
        replayed = RolloutConfig(max_turns=8)
        seconds, phases = timed(
            workspace, issue, replays, options, replayed, root / f"tests-{jobs}"
        )
        testing = phases["candidate-tests"] - phases["test-generation"]
        print(f"jobs={jobs}: total {seconds:5.1f} s, tests after the rollouts {testing:5.1f} s")
    real_repositories(root, args.image, k)


if __name__ == "__main__":
    main()
