"""The Docker daemon going away mid-run: told apart from other failures by asking it.

A lost daemon shows up as whatever the call in flight raised (requests'
`ConnectionError`, a broken pipe, an exec stream that ends early), so the
failure's type says little. What settles it is whether the daemon still answers
a ping; only then is the failure reported as the one line `DockerLostError`
gives, naming the daemon's address and what to do.
"""

from __future__ import annotations

import os

import docker
from docker.errors import DockerException
from requests import RequestException

from cwm_agent.sandbox.errors import DockerUnavailableError

DEFAULT_HOST = "unix:///var/run/docker.sock"  # docker-py's, when DOCKER_HOST is unset
PING_TIMEOUT_S = 10.0
# What a call raises when the daemon goes: worth asking the daemon whether it is there.
LOST_ERRORS: tuple[type[BaseException], ...] = (DockerException, RequestException, ConnectionError)


def address() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_HOST


class DockerLostError(DockerUnavailableError):
    """The daemon stopped answering mid-run; `then` says how to go on once it is back."""

    def __init__(self, why: str, then: str) -> None:
        super().__init__(
            f"{lost_reason(why)}: start Docker again (or point DOCKER_HOST at it), then {then}"
        )


def lost_reason(why: str) -> str:
    """What an instance that was in flight records as its reason."""
    return f"lost the Docker daemon at {address()} ({why})"


def lost() -> str | None:
    """Why the daemon does not answer (e.g. `Connection refused`), or None when it does."""
    try:
        client = docker.from_env(timeout=PING_TIMEOUT_S)
        try:
            client.ping()
        finally:
            client.close()
    except (DockerException, RequestException, OSError) as exc:
        return _cause(exc)
    return None


def check(then: str) -> None:
    """Raise `DockerLostError` if the daemon does not answer."""
    why = lost()
    if why is not None:
        raise DockerLostError(why, then) from None


def _cause(exc: BaseException) -> str:
    """The system's words for the innermost failure (`Connection refused`, `No such file
    or directory`), found through wrapped exceptions and their arguments."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        item = pending.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
        pending += [*item.args, item.__cause__, item.__context__]
        pending += [getattr(item, "reason", None)]  # urllib3 keeps its cause there
    return "it does not answer"


def reason_for(exc: BaseException) -> str | None:
    """The reason to record when `exc` came from a lost daemon; None when it did not."""
    if not isinstance(exc, LOST_ERRORS):
        return None
    why = lost()
    return None if why is None else lost_reason(why)
