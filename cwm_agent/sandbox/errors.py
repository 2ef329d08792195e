"""Errors a user can cause or meet in the sandbox layer.

Each carries one line that says what is wrong and what to do; the CLI prints
it without a traceback.
"""

from __future__ import annotations

from cwm_agent.errors import UserError


class SandboxError(UserError):
    """A sandbox could not be created or used; the message is meant for users."""


class DockerUnavailableError(SandboxError):
    pass


class ImageNotFoundError(SandboxError):
    pass


class NoBashError(SandboxError):
    pass


class SessionStartError(SandboxError):
    pass


class DiskLimitExceeded(SandboxError):
    """The sandbox wrote more than its disk limit and was stopped."""


class SandboxClosed(SandboxError):
    """The sandbox was closed (by an interrupt, from another thread) while it started."""


class FileTooLargeError(SandboxError):
    """A file the host was asked to read is larger than the caller's bound."""

    def __init__(self, path: str, size: int, limit: int) -> None:
        super().__init__(f"{path} has {size} bytes, over the limit of {limit}")
        self.path, self.size, self.limit = path, size, limit


class FileChangedError(SandboxError):
    """A file changed (was truncated, replaced or grew) while the host read it."""

    def __init__(self, path: str, cause: BaseException) -> None:
        super().__init__(f"{path} changed while it was being read ({type(cause).__name__})")
        self.path = path


class SandboxInterrupted(BaseException):
    """Raised in the main thread on SIGTERM/SIGHUP so `with` blocks tear down."""
