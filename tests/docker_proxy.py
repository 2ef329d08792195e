"""A unix-socket proxy to the Docker daemon, run as its own process: killing it loses
the daemon for whoever talks through it (`DOCKER_HOST=unix://LISTEN`), as a daemon
crash would, while the real daemon and everyone else's work go on.

    python tests/docker_proxy.py LISTEN [TARGET]   (TARGET: /var/run/docker.sock)

It prints `ready` once it accepts connections.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading


def pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes one way until either side closes; then close the sink's write half,
    as a hijacked docker stream (exec, attach) expects."""
    with contextlib.suppress(OSError):
        while chunk := source.recv(1 << 16):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def serve(listen: str, target: str) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(listen)
    server.listen(64)
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(target)
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(source, sink), daemon=True).start()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "/var/run/docker.sock")
