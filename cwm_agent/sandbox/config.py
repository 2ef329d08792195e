"""Typed knobs of a sandbox container and its shell session."""

from __future__ import annotations

from docker.errors import DockerException
from docker.utils import parse_bytes
from pydantic import BaseModel, Field, field_validator

OUTPUT_CAP_BYTES = 480 * 1024  # the CWM evaluation's cap on one bash call's output
DEFAULT_SESSION_TIMEOUT_S = 120.0  # per bash call, as in the CWM evaluation
WORKDIR = "/testbed"  # the repository inside a sandbox, where SWE-bench images keep it


class SandboxConfig(BaseModel):
    """Everything needed to start a sandbox; validated before any container exists."""

    image: str = "cwm-base:bookworm"
    workdir: str = Field(WORKDIR, description="start directory of every (re)started session")
    startup: list[str] = Field(
        default_factory=list,
        description="shell commands run at the start of every (re)started session",
    )
    network: bool = Field(False, description="give the container a network (off by default)")
    memory: str = Field("8g", description="memory limit, docker syntax (e.g. 512m, 8g)")
    disk: str | None = Field(
        "10g",
        description="most the container may write to the host's disk, docker syntax; a "
        "watchdog on its writable layer stops it past that (None: no limit)",
    )
    pids_limit: int = Field(4096, gt=0)
    cpus: float = Field(2.0, gt=0)
    env: dict[str, str] = Field(
        default_factory=dict,
        description="the container's whole environment besides the image's own: nothing else "
        "from the host is passed in",
    )
    user: str | None = Field(None, description="user to run as; the image's default if unset")
    session_timeout: float = Field(DEFAULT_SESSION_TIMEOUT_S, gt=0)
    output_cap: int = Field(OUTPUT_CAP_BYTES, gt=0)
    labels: dict[str, str] = Field(default_factory=dict, description="extra container labels")

    @field_validator("disk")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_bytes(value)
            except DockerException:
                raise ValueError(f"{value!r} is not a size such as 512m or 10g") from None
        return value
