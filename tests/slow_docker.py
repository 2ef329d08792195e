"""A unix socket in front of the real Docker daemon's, in the test's own process, for
a daemon that creates containers slowly: bytes pass both ways unchanged (hijacked
attach streams too), except that requests to create a container are held until
`release()`, as a loaded daemon takes half a minute and more to create one. Point a
process at it with `DOCKER_HOST=proxy.url`. (tests/docker_proxy.py is the proxy
run as a process of its own, to be killed: a daemon lost.)"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path

_UPSTREAM = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


class SlowDocker:
    def __init__(self, folder: Path, hold_creates: bool = False) -> None:
        if not _UPSTREAM.startswith("unix://"):
            raise RuntimeError(f"SlowDocker needs a unix-socket daemon, not {_UPSTREAM}")
        self.path = folder / "docker.sock"
        self.upstream = _UPSTREAM.removeprefix("unix://")
        self.released = threading.Event()
        if not hold_creates:
            self.released.set()
        self.lock = threading.Lock()
        self.creates_held = 0  # create requests received while held
        self.creates_made = 0  # the daemon's 201 answers to them
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(self.path))
        self.listener.listen(64)
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def release(self) -> None:
        """Let held creates through, and every later one at once."""
        self.released.set()

    def close(self) -> None:
        self.release()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            daemon = socket.socket(socket.AF_UNIX)
            daemon.connect(self.upstream)
            self.sockets += [client, daemon]
            creates: list[int] = []  # creates sent on this connection, not yet answered
            for run in (self._requests, self._answers):
                threading.Thread(target=run, args=(client, daemon, creates), daemon=True).start()

    def _requests(self, client: socket.socket, daemon: socket.socket, creates: list[int]) -> None:
        """Client to daemon; a create is held, then sent even if its client has gone
        (the daemon had it: only the client stopped waiting)."""
        while chunk := _read(client):
            if chunk.startswith(b"POST ") and b"/containers/create" in chunk:
                with self.lock:
                    self.creates_held += 0 if self.released.is_set() else 1
                self.released.wait()
                creates.append(1)
            with contextlib.suppress(OSError):
                daemon.sendall(chunk)
        if not creates:  # else the daemon might take the client's leaving as a cancel
            with contextlib.suppress(OSError):
                daemon.shutdown(socket.SHUT_WR)

    def _answers(self, client: socket.socket, daemon: socket.socket, creates: list[int]) -> None:
        """Daemon to client; HTTP/1.1 answers in order, so a 201 after a create is its."""
        while chunk := _read(daemon):
            if chunk.startswith(b"HTTP/1.1 201") and creates:
                creates.pop()
                with self.lock:
                    self.creates_made += 1
            with contextlib.suppress(OSError):
                client.sendall(chunk)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)


def _read(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 16)
    except OSError:
        return b""
