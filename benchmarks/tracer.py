"""Real-tracer speed: every CRUXEval function traced in one sandbox container.

    .venv/bin/python benchmarks/tracer.py --data cruxeval.jsonl [--workers 2] [--repeats 3]

Each job is its own process inside the container (`tracer.py --batch`), so the figure
includes a Python start-up per function. Prints a markdown table for
benchmarks/RESULTS.md and checks each traced return value against the row's
expected output.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from pathlib import Path

from cwm_agent.trace.actual import TraceJob, TracerLimits, run_tracer
from cwm_agent.trace.cruxeval import FUNCTION, load_rows
from cwm_agent.trace.format import Event, frame_pieces, render_text
from cwm_agent.trace.scoring import same_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image", default="cwm-base:bookworm")
    args = parser.parse_args()
    rows = load_rows(args.data, None)
    jobs = [TraceJob(row.code, FUNCTION, row.input) for row in rows]
    limits = TracerLimits(image=args.image, workers=args.workers)
    durations = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        traces = run_tracer(jobs, limits, chunk=len(jobs))
        durations.append(time.perf_counter() - started)
    statuses = Counter(trace.status for trace in traces)
    agree = sum(same_value(t.output, r.output) for t, r in zip(traces, rows, strict=True))
    frames = [len(trace.frames) for trace in traces]
    lines = [sum(f.event == Event.LINE for f in trace.frames) for trace in traces]
    size = [sum(len(render_text(frame_pieces(f))) for f in trace.frames) for trace in traces]
    best = min(durations)
    print(f"| functions | {len(jobs)} |")
    print(
        f"| wall time, one container, {args.workers} workers (best of {args.repeats}) "
        f"| {best:.1f} s ({1000 * best / len(jobs):.1f} ms per function) |"
    )
    print(f"| all runs | {', '.join(f'{d:.1f}' for d in durations)} s |")
    print(f"| statuses | {dict(statuses)} |")
    print(f"| traced output equals the row's expected output | {agree}/{len(rows)} |")
    print(f"| frames per trace: median / max | {statistics.median(frames):g} / {max(frames)} |")
    print(f"| line events per trace: median / max | {statistics.median(lines):g} / {max(lines)} |")
    print(
        f"| rendered trace size: median / max | {statistics.median(size):g} / {max(size)} chars |"
    )


if __name__ == "__main__":
    main()
