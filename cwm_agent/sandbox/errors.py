"""Errors a user can cause or meet in the sandbox layer.

Each carries one line that says what is wrong and what to do; the CLI prints
it without a traceback.
"""

from __future__ import annotations


class SandboxError(Exception):
    """A sandbox could not be created or used; the message is meant for users."""


class DockerUnavailableError(SandboxError):
    pass


class ImageNotFoundError(SandboxError):
    pass


class NoBashError(SandboxError):
    pass


class SessionStartError(SandboxError):
    pass


class SandboxInterrupted(BaseException):
    """Raised in the main thread on SIGTERM/SIGHUP so `with` blocks tear down."""
