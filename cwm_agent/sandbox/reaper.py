"""`python -m cwm_agent.sandbox.reaper PID COUNT`: left behind by a process that exited
while Docker was still creating COUNT of its containers; removes them as they appear
(they carry PID's pid and host labels), for at most WAIT_S."""

from __future__ import annotations

import contextlib
import socket
import sys
import time

import docker
from docker.errors import DockerException

from cwm_agent.sandbox.container import LABEL

WAIT_S = 300.0  # a create the daemon has not answered by then is not coming
_POLL_S = 0.5


def reap(client: docker.DockerClient, pid: int, count: int) -> None:
    labels = [f"{LABEL}.pid={pid}", f"{LABEL}.host={socket.gethostname()}"]
    removed: set[str] = set()
    deadline = time.monotonic() + WAIT_S
    while len(removed) < count and time.monotonic() < deadline:
        with contextlib.suppress(DockerException):
            for found in client.api.containers(all=True, filters={"label": labels}):
                with contextlib.suppress(DockerException):
                    client.api.remove_container(found["Id"], force=True)
                removed.add(found["Id"])
        time.sleep(_POLL_S)


def main(argv: list[str]) -> None:
    pid, count = int(argv[1]), int(argv[2])
    with contextlib.suppress(DockerException):
        reap(docker.from_env(), pid, count)


if __name__ == "__main__":
    main(sys.argv)
