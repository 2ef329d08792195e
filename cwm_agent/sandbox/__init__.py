"""Containers and the persistent shell session the agent acts through."""

from cwm_agent.sandbox.config import WORKDIR, SandboxConfig
from cwm_agent.sandbox.container import LABEL, PathStat, Sandbox, docker_client, remove_leftovers
from cwm_agent.sandbox.errors import (
    DockerUnavailableError,
    FileChangedError,
    FileTooLargeError,
    ImageNotFoundError,
    NoBashError,
    SandboxError,
    SandboxInterrupted,
    SessionStartError,
)
from cwm_agent.sandbox.session import ShellResult, ShellSession

__all__ = [
    "LABEL",
    "WORKDIR",
    "DockerUnavailableError",
    "FileChangedError",
    "FileTooLargeError",
    "ImageNotFoundError",
    "NoBashError",
    "PathStat",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "SandboxInterrupted",
    "SessionStartError",
    "ShellResult",
    "ShellSession",
    "docker_client",
    "remove_leftovers",
]
