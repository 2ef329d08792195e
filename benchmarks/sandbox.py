"""Sandbox speed: container start-up, bash round trips, edit round trips, copy-in.

    .venv/bin/python benchmarks/sandbox.py [--image cwm-base:bookworm] [--calls 200]

Prints a markdown table (paste it into benchmarks/RESULTS.md with the machine
it ran on) and writes the raw figures as JSON next to it with --json FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cwm_agent.sandbox import Sandbox, SandboxConfig, docker_client
from cwm_agent.tools import Toolbox


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "n": len(ordered)}


def timed(action: Callable[[], object], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return samples


def make_repo(root: Path, megabytes: int) -> None:
    """Source-like text files adding up to `megabytes` MB."""
    line = "def function_{0}(value):\n    return value * {0}  # padding to look like code\n"
    chunk = "".join(line.format(i) for i in range(1000)).encode()
    per_file = 100 * 1024
    for index in range(megabytes * 1024 * 1024 // per_file):
        folder = root / f"pkg{index % 20}"
        folder.mkdir(exist_ok=True)
        (folder / f"module_{index}.py").write_bytes(
            (chunk * (per_file // len(chunk) + 1))[:per_file]
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="cwm-base:bookworm")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--repo-mb", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    client = docker_client()
    config = SandboxConfig(image=args.image, workdir="/testbed")
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "docker": client.version().get("Version"),
        "storage_driver": client.info().get("Driver"),
        "image": args.image,
    }
    results: dict[str, dict[str, float]] = {}

    starts = []
    for _ in range(args.starts):
        started = time.perf_counter()
        with Sandbox(config, client):
            starts.append(time.perf_counter() - started)
    results["start_up"] = percentiles(starts)

    with Sandbox(config, client) as box:
        assert box.session is not None and box.id is not None
        session = box.session
        session.run("true")  # warm up
        results["session_true"] = percentiles(timed(lambda: session.run("true"), args.calls))

        def docker_exec() -> None:
            exec_id = client.api.exec_create(box.id, ["bash", "-c", "true"])["Id"]
            client.api.exec_start(exec_id)
            client.api.exec_inspect(exec_id)  # the exit code, as a stateless runner needs it

        results["docker_exec_true"] = percentiles(timed(docker_exec, args.calls))

        tools = Toolbox(box)
        tools.run("create", "big.py\n" + "".join(f"value_{i} = {i}\n" for i in range(1000)))
        flip = iter(range(10**9))

        def edit() -> None:
            i = next(flip)
            old, new = ("value_500 = 500", "value_500 = 501")[:: 1 if i % 2 == 0 else -1]
            result = tools.run(
                "edit", f"big.py\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE"
            )
            assert result.ok, result.output

        results["edit_round_trip"] = percentiles(timed(edit, 50))

        with tempfile.TemporaryDirectory() as folder:
            make_repo(Path(folder), args.repo_mb)
            copies = timed(lambda: box.copy_in(Path(folder), "/copy"), 3)
        results["copy_in_50mb"] = percentiles(copies)

    speedup = results["docker_exec_true"]["p50_ms"] / results["session_true"]["p50_ms"]
    print(f"{meta['machine']}, docker {meta['docker']} ({meta['storage_driver']}), {args.image}")
    print("| measure | p50 | p95 | n |\n|---|---|---|---|")
    for key, row in results.items():
        print(f"| {key} | {row['p50_ms']:.2f} ms | {row['p95_ms']:.2f} ms | {row['n']:.0f} |")
    print(f"session round trip vs one docker exec per call, at p50: {speedup:.0f}x faster")
    if args.json:
        args.json.write_text(json.dumps({**meta, **results, "speedup_p50": speedup}, indent=2))


if __name__ == "__main__":
    main()
