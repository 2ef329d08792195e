"""`cwm-agent view` on a large SWE-bench batch: how long the index and one instance take.

    .venv/bin/python benchmarks/view.py [--instances 500] [--turns 60] [--output-kb 2]

Builds a batch folder of that many instances (each a `result.json` and a
`trajectory.json` of `--turns` turns with `--output-kb` of tool output each, written
through the project's own models) and then measures: the index page alone (what
`--serve` renders for `/`), one instance page (what it renders when one is opened),
and `view` writing the index and every instance page. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from cwm_agent.agent.trajectory import MessageRecord, ToolCallRecord, ToolResultRecord, Trajectory
from cwm_agent.swebench.runner import InstanceResult
from cwm_agent.view import write
from cwm_agent.view.render import batch_page, instance_page
from cwm_agent.view.runs import BatchRun
from cwm_agent.view.server import instance_link

REPOS = ["astropy/astropy", "django/django", "sympy/sympy", "pytest-dev/pytest", "sphinx/sphinx"]
OUTCOMES = ["submitted", "submitted", "empty", "error"]


def trajectory(turns: int, output_kb: int) -> Trajectory:
    output = ("x" * 99 + "\n") * (output_kb * 1024 // 100)
    messages = [MessageRecord(role="user", content="the issue", turn=0, tokens=500)]
    for turn in range(1, turns + 1):
        reply = f"Step {turn}: look around.\n</think>\n\n<tool: bash>\nls -la\n</tool>"
        messages.append(
            MessageRecord(
                role="assistant",
                content=reply,
                turn=turn,
                tokens=40,
                duration_s=2.0,
                tool_call=ToolCallRecord(name="bash", argument="ls -la"),
            )
        )
        result = ToolResultRecord(output=output, ok=True, exit_code=0, duration_s=0.1)
        body = (
            f"<output>\n{output}</output>\n\n<budget>\n* Remaining turns: {128 - turn}\n</budget>"
        )
        messages.append(
            MessageRecord(
                role="tool: bash", content=body, turn=turn, tokens=600, tool_result=result
            )
        )
    return Trajectory(
        task="issue",
        model="bench",
        config={"context_size": 131072},
        issue="the issue",
        status="max_turns",
        turns=turns,
        tokens_used=sum(m.tokens or 0 for m in messages),
        started_at="2026-12-01T00:00:00+00:00",
        messages=messages,
    )


def make_batch(root: Path, instances: int, turns: int, output_kb: int) -> int:
    """The batch folder; returns the bytes of trajectories written."""
    text = trajectory(turns, output_kb).model_dump_json()
    for i in range(instances):
        status = OUTCOMES[i % len(OUTCOMES)]
        result = InstanceResult(
            instance_id=f"repo__repo-{i}",
            repo=REPOS[i % len(REPOS)],
            difficulty=["<15 min fix", "15 min - 1 hour", "1-4 hours"][i % 3],
            image="bench",
            status=status,  # type: ignore[arg-type]
            error="sandbox" if status == "error" else None,
            turns=turns,
            tokens_used=1000 + 37 * i,
            duration_s=60.0 + i % 97,
            worker=f"node{i % 4}/swebench_{i % 8}",
        )
        folder = root / "trajectories" / result.instance_id
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(result.model_dump_json())
        (folder / "trajectory.json").write_text(text)
    return len(text) * instances


def measure(action: Callable[[], object]) -> tuple[float, float]:
    """Seconds of one call, then the peak Python memory (MiB) of another, traced (slower)."""
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    tracemalloc.start()
    action()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--turns", type=int, default=60)
    parser.add_argument("--output-kb", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cwm-agent-view-bench-"))
    try:
        size = make_batch(root, args.instances, args.turns, args.output_kb)
        served = BatchRun(root)  # as `--serve` holds it once the index was asked for
        served.results  # noqa: B018
        rows = [
            ("index page (`--serve` /, the first request)", *measure(
                lambda: batch_page(BatchRun(root), instance_link)
            )),
            ("one instance page (`--serve` /instance/ID)", *measure(
                lambda: instance_page(served, "repo__repo-7")
            )),
            ("`view DIR`: index and every instance page", *measure(
                lambda: write(root, root / "index.html")
            )),
        ]  # fmt: skip
        index_kb = (root / "index.html").stat().st_size / 1024
        page_kb = (root / "trajectories/repo__repo-7/index.html").stat().st_size / 1024
    finally:
        shutil.rmtree(root)
    print(
        f"{args.instances} instances x {args.turns} turns, {size / 2**20:.0f} MiB of trajectories"
    )
    print(f"index.html {index_kb:.0f} KiB, one instance page {page_kb:.0f} KiB")
    print(f"python {platform.python_version()}, max RSS {_rss():.0f} MiB\n")
    print("| measure | time | peak Python memory |\n|---|---|---|")
    for name, seconds, peak in rows:
        print(f"| {name} | {seconds:.2f} s | {peak:.1f} MiB |")


def _rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
