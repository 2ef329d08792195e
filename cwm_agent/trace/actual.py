"""Real traces: `tracer.py` run on untrusted code inside a sandbox container.

One container (no network, a memory and process limit, an unprivileged user) runs
every job of a call; inside it each job is its own process with a timeout
(`tracer.py --batch`), so a job that loops, forks or crashes ends alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources

import docker
from pydantic import BaseModel, Field

from cwm_agent.sandbox import Sandbox, SandboxConfig, SandboxError, docker_client
from cwm_agent.sandbox.image import DEFAULT_IMAGE, ensure_image
from cwm_agent.trace.format import Frame

WORKDIR = "/cwm-trace"  # inside the container: root's, read-only to the traced code
TRACER_PATH = f"{WORKDIR}/tracer.py"
JOBS_PATH = f"{WORKDIR}/jobs.json"
NOBODY = "65534:65534"


class TracerLimits(BaseModel):
    """Caps of one real trace (the CWM paper's 10k line events and 1 MB) and its sandbox."""

    max_lines: int = Field(10_000, gt=0)
    max_bytes: int = Field(1_000_000, gt=0)
    timeout_s: float = Field(10.0, gt=0, description="per job, inside the sandbox")
    memory_mb: int = Field(1024, gt=0, description="address space of one job")
    workers: int = Field(2, gt=0, description="jobs run at once inside the sandbox")
    image: str = DEFAULT_IMAGE
    container_memory: str = "2g"
    pids_limit: int = Field(256, gt=0)


@dataclass(frozen=True)
class TraceJob:
    """Trace `function(ARGS)` of `source`; `args` is Python call syntax, e.g. `[1, 2], k=3`."""

    source: str
    function: str
    args: str


@dataclass(frozen=True)
class ActualTrace:
    """The tracer's answer: `status` is ok, lines/bytes (cut at a cap), timeout or error."""

    status: str
    frames: list[Frame] = field(default_factory=list)
    output: str | None = None  # repr of the entry function's return value
    error: str | None = None  # why there is no trace (status error or timeout)
    raised: str | None = None  # the exception the entry function raised, if any

    @property
    def complete(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, object]:
        return {
            "status": self.status,
            "frames": [frame.to_json() for frame in self.frames],
            "output": self.output,
            "error": self.error,
            "raised": self.raised,
        }

    @classmethod
    def from_json(cls, data: dict) -> ActualTrace:
        return cls(
            data["status"],
            [Frame.from_json(frame) for frame in data.get("frames", [])],
            data.get("output"),
            data.get("error"),
            data.get("raised"),
        )


def tracer_source() -> bytes:
    return resources.files("cwm_agent.trace").joinpath("tracer.py").read_bytes()


def _failure(image: str, code: int, err: bytes) -> str:
    """Why `tracer.py --batch` gave no results, for users."""
    if code > 128:  # ended by a signal: traced code can kill the process that runs it
        return (
            f"the tracer process was killed in {image} (exit code {code}, signal {code - 128}): "
            "the traced code killed it, or the container ran out of memory"
        )
    detail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
    return (
        f"the tracer failed in {image} (exit code {code}: {detail[0]}); "
        "it needs python3 (3.8 or newer) in the image"
    )


def run_tracer(
    jobs: Sequence[TraceJob],
    limits: TracerLimits | None = None,
    *,
    max_frames: int = 0,
    chunk: int = 50,
    progress: Callable[[int], None] | None = None,
    client: docker.DockerClient | None = None,
) -> list[ActualTrace]:
    """Real traces of `jobs`, in order; `max_frames` > 0 stops each after that many
    frames (1: just the call frame, which is how a prediction's arguments are known)."""
    limits = limits or TracerLimits()
    config = SandboxConfig(
        image=limits.image,
        workdir=WORKDIR,
        memory=limits.container_memory,
        pids_limit=limits.pids_limit,
        cpus=float(limits.workers),
        user=NOBODY,
        labels={"cwm-agent.purpose": "trace"},
    )
    settings = {
        "max_lines": limits.max_lines,
        "max_bytes": limits.max_bytes,
        "max_frames": max_frames,
        "memory_mb": limits.memory_mb,
    }
    results: list[ActualTrace] = []
    client = client or docker_client()
    ensure_image(client, limits.image)  # the default image is built on first use
    with Sandbox(config, client) as sandbox:
        sandbox.write_file(TRACER_PATH, tracer_source(), mode=0o644)
        for start in range(0, len(jobs), chunk):
            batch = [
                {"source": j.source, "function": j.function, "args": j.args, **settings}
                for j in jobs[start : start + chunk]
            ]
            sandbox.write_file(JOBS_PATH, json.dumps(batch).encode(), mode=0o644)
            argv = ["python3", TRACER_PATH, "--batch", JOBS_PATH]
            code, out, err = sandbox.exec([*argv, str(limits.timeout_s), str(limits.workers)])
            lines = out.decode("utf-8", "replace").splitlines()
            if code != 0 or len(lines) != len(batch):
                raise SandboxError(_failure(limits.image, code, err))
            results += [ActualTrace.from_json(json.loads(line)) for line in lines]
            if progress is not None:
                progress(len(batch))
    return results
