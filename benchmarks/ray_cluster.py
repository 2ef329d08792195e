"""Ray's cost per instance, and what a Verified run at k = 40 needs on paper.

1. Overhead: N SWE-style instances (a one-file repository at /testbed in an
   image made from the base image; each a replayed rollout of `--turns` bash
   calls) run by `swebench run`'s `run_batch` on the thread pool, then with
   `--ray local` offering the same concurrency (docker_slots = workers).
   Per instance, the time outside the instance's own work (wall x workers / N
   minus the mean `duration_s` of result.json): on Ray, scheduling, the task's
   set-up and shipping the files back; the overhead is Ray's minus the thread
   pool's, which cancels most of a shared machine's noise. Ray's own start-up
   (`ray.init`, once per run) is reported apart, and the batch runs twice on
   Ray: cold (its worker processes start and import cwm-agent) and warm (Ray
   keeps idle workers, as it does through a long run).
2. Capacity: how many GPUs and sandbox nodes finish 500 instances x (40
   candidates + 40 test-generation rollouts) in 24 h, from the container
   start and sandbox time measured in 1 and the model figures given as flags
   (defaults: the H100 decode rate in RESULTS.md; tokens and turns per
   rollout are assumptions to replace with measured ones).

(Not named ray.py: run as a script, that file would shadow the ray package.)

Run: .venv/bin/python benchmarks/ray_cluster.py [--instances 8 --workers 1 --turns 4]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import docker

from cwm_agent.sandbox import docker_client
from cwm_agent.swebench import cluster
from cwm_agent.swebench.runner import InstanceResult, RunOptions, run_batch

IMAGE = "cwm-agent-bench/ray-repo:latest"


def build_image(client: docker.DockerClient, base: str, root: Path) -> None:
    repo = root / "testbed"
    repo.mkdir()
    (repo / "app.py").write_text("def add(a, b):\n    return a - b\n")
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b.invalid", "-C", str(repo)]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "app"]):
        subprocess.run([*git, *args], check=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(repo, arcname="testbed")
    container = client.containers.create(base, command=["true"])
    try:
        container.put_archive("/", buffer.getvalue())
        container.commit(*IMAGE.split(":"))
    finally:
        container.remove(force=True)


def fixture(root: Path, instances: int, turns: int) -> tuple[Path, Path]:
    """The dataset file and the replay folder: `turns` bash calls per instance."""
    rows, replays = [], root / "replays"
    replays.mkdir()
    reply = "Looking.\n</think>\n\n<tool: bash>\ngit status --short; cat app.py\n</tool>"
    for i in range(instances):
        instance_id = f"bench__bench-{i}"
        rows.append(
            {
                "instance_id": instance_id,
                "repo": "bench/bench",
                "problem_statement": "add() subtracts\n",
                "image": IMAGE,
            }
        )
        (replays / f"{instance_id}.json").write_text(json.dumps([reply] * turns))
    dataset = root / "dataset.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return dataset, replays


def timed_run(options: RunOptions) -> tuple[float, list[InstanceResult]]:
    started = time.monotonic()
    results = run_batch(options)
    return time.monotonic() - started, results


def mean_duration(results: list[InstanceResult]) -> float:
    return sum(r.duration_s for r in results) / len(results)


def capacity(args: argparse.Namespace, start_s: float, turn_sandbox_s: float) -> list[str]:
    """The paper table: GPUs from tokens and decode rate, sandbox slots from what
    each container is held for (a rollout holds its container while the model thinks)."""
    rollouts = args.verified * (args.k + args.k)
    tokens = rollouts * args.tokens_per_rollout
    day = 24 * 3600
    gpus = math.ceil(tokens / args.decode_tokens_s / day)
    generation_s = args.tokens_per_rollout / (args.decode_tokens_s / args.batch)
    held_s = start_s + generation_s + args.turns_per_rollout * args.tool_s_per_turn
    rollout_slots = math.ceil(rollouts * held_s / day)
    grading_runs = args.verified * args.k * 6  # each candidate: regression + 5 generated tests
    grading_slots = math.ceil(grading_runs * (start_s + args.test_s) / day)
    nodes = math.ceil((rollout_slots + grading_slots) / args.slots_per_node)
    return [
        "| quantity | value | from |",
        "|---|---|---|",
        f"| rollouts | {rollouts:,} | {args.verified} instances x ({args.k} + {args.k}) |",
        f"| generated tokens | {tokens / 1e6:,.0f} M | {args.tokens_per_rollout:,} per rollout"
        " (assumed) |",
        f"| GPUs (replicas) for 24 h | **{gpus}** | {args.decode_tokens_s:g} tokens/s per GPU"
        f" at batch {args.batch} |",
        f"| container held per rollout | {held_s / 60:.1f} min | start {start_s:.1f} s (measured)"
        f" + generation {generation_s / 60:.1f} min + {args.turns_per_rollout} turns x"
        f" {args.tool_s_per_turn:g} s tools (assumed) |",
        f"| sandbox time per turn, replayed bash | {turn_sandbox_s * 1000:.0f} ms | measured |",
        f"| docker slots, rollouts | {rollout_slots} | rollouts x held / 24 h |",
        f"| docker slots, grading | {grading_slots} | {grading_runs:,} test runs x"
        f" ({start_s:.1f} s + {args.test_s:g} s) / 24 h |",
        f"| sandbox nodes for 24 h | **{nodes}** | {args.slots_per_node} slots per node |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--turns", type=int, default=4, help="replayed bash calls per instance")
    parser.add_argument("--base-image", default="cwm-base:bookworm")
    parser.add_argument("--verified", type=int, default=500)
    parser.add_argument("--k", type=int, default=40)
    parser.add_argument("--tokens-per-rollout", type=int, default=20_000)
    parser.add_argument("--turns-per-rollout", type=int, default=40)
    parser.add_argument("--tool-s-per-turn", type=float, default=3.0)
    parser.add_argument("--test-s", type=float, default=60.0, help="one grading test run")
    parser.add_argument("--decode-tokens-s", type=float, default=224.1, help="per GPU")
    parser.add_argument("--batch", type=int, default=8, help="rollouts decoded together per GPU")
    parser.add_argument("--slots-per-node", type=int, default=16)
    args = parser.parse_args()

    client = docker_client()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        build_image(client, args.base_image, root)
        try:
            dataset, replays = fixture(root, args.instances, args.turns)

            def options(name: str, ray: cluster.ClusterOptions | None) -> RunOptions:
                return RunOptions(
                    dataset=str(dataset),
                    model=f"replay:{replays}",
                    output=root / name,
                    workers=args.workers,
                    rollout={"max_turns": args.turns},
                    ray=ray,
                )

            threads_s, threads = timed_run(options("threads", None))
            started = time.monotonic()
            cluster.connect("local", local_slots=args.workers)
            init_s = time.monotonic() - started
            on_cluster = cluster.ClusterOptions(address="local")
            cold_s, cold = timed_run(options("ray-cold", on_cluster))
            ray_s, on_ray = timed_run(options("ray", on_cluster))
        finally:
            client.images.remove(IMAGE, force=True)

    assert len(threads) == len(cold) == len(on_ray) == args.instances
    failed = [
        f"{r.instance_id}: {r.reason}" for r in threads + cold + on_ray if r.status != "empty"
    ]
    assert not failed, failed
    start_s = sum(r.duration_s - r.usage.sandbox_s for r in threads) / len(threads)
    turn_s = sum(r.usage.sandbox_s for r in threads) / sum(r.turns for r in threads)
    info = client.info()
    print(
        f"Machine: {platform.machine()} {platform.processor() or ''}, "
        f"{info.get('NCPU')} CPUs, storage driver {info.get('Driver')}; "
        f"{args.instances} instances x {args.turns} turns, {args.workers} at a time.\n"
    )
    print("| path | wall | per instance | in the instance | outside it | overhead |")
    print("|---|---|---|---|---|---|")
    outside_threads = threads_s * args.workers / args.instances - mean_duration(threads)
    for name, wall, results in (
        ("thread pool", threads_s, threads),
        ("`--ray local`, cold workers", cold_s, cold),
        ("`--ray local`, warm workers", ray_s, on_ray),
    ):
        each = wall * args.workers / args.instances
        inside = mean_duration(results)
        extra = each - inside - outside_threads
        print(
            f"| {name} | {wall:.1f} s | {each:.2f} s | {inside:.2f} s | {each - inside:.2f} s"
            f" | {extra:+.2f} s |"
        )
    print(f"\nray.init (--ray local, once per run): {init_s:.1f} s")
    print("\n" + "\n".join(capacity(args, start_s, turn_s)))


if __name__ == "__main__":
    main()
