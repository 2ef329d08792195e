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

Run: .venv/bin/python benchmarks/tts.py [--samples 8 --test-samples 8]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from generation import small_random_cwm  # type: ignore[import-not-found]

from cwm_agent import gitrepo
from cwm_agent.agent import RolloutConfig
from cwm_agent.model import ModelOptions, PolicyPool
from cwm_agent.sandbox import docker_client
from cwm_agent.tts import TTSOptions, TTSRun
from cwm_agent.workspace import Workspace

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "clamp"


def clamp_workspace(root: Path, image: str) -> tuple[Workspace, str]:
    repo = root / "clamp"
    subprocess.run(["cp", "-r", str(EXAMPLE / "repo"), str(repo)], check=True)
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b.invalid", "-C", str(repo)]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "clamp"]):
        subprocess.run([*git, *args], check=True)
    snapshot = gitrepo.snapshot(gitrepo.open_repo(repo), False)
    return Workspace(image=image, snapshot=snapshot.tar), (EXAMPLE / "issue.md").read_text()


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
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--test-samples", type=int, default=8)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--reply-tokens", type=int, default=48)
    parser.add_argument("--image", default="cwm-base:bookworm")
    args = parser.parse_args()
    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix="tts-bench-"))
    workspace, issue = clamp_workspace(root, args.image)
    k, m = args.samples, args.test_samples
    driver = docker_client().info()["Driver"]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {driver}")

    model = small_random_cwm(root)
    rollout = RolloutConfig(max_turns=args.turns, max_reply_tokens=args.reply_tokens)
    print(f"## rollouts: K={k}, M={m}, {args.turns} turns of {args.reply_tokens} tokens")
    for jobs in (k + m, 1):
        pool = PolicyPool(str(model), ModelOptions(greedy=True, offline=True))
        options = TTSOptions(samples=k, test_samples=m, jobs=jobs)
        seconds, _ = timed(workspace, issue, pool, options, rollout, root / f"rollouts-{jobs}")
        stats = pool.batching.stats if pool.batching else None
        batches = f", {stats.calls} model calls, largest {stats.largest}" if stats else ""
        print(f"jobs={jobs:2d}: {seconds:6.1f} s{batches}")

    print("## test running: clamp replays, K=5, M=4")
    replays = PolicyPool(f"replay:{EXAMPLE / 'replays'}")
    for jobs in (9, 1):
        options = TTSOptions(samples=5, test_samples=4, jobs=jobs)
        replayed = RolloutConfig(max_turns=8)
        seconds, phases = timed(
            workspace, issue, replays, options, replayed, root / f"tests-{jobs}"
        )
        testing = phases["candidate-tests"] - phases["test-generation"]
        print(f"jobs={jobs}: total {seconds:5.1f} s, tests after the rollouts {testing:5.1f} s")


if __name__ == "__main__":
    main()
