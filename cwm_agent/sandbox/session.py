"""A persistent bash session inside a container, over one `docker exec` pipe.

One long-lived bash reads NUL-terminated commands from its stdin, `eval`s each
with stdin from /dev/null (so a command that reads stdin sees EOF instead of
eating the next command), and prints a sentinel with the exit code. State (cwd,
variables, functions) persists because everything runs in that one shell. A
round trip costs a pipe write and a read, not a `docker exec` (~50 ms).

The sentinel is printed from two halves kept in unexported shell variables, so
no variable, argument or file in the container holds the whole marker and
`env`, `set` or `ps` cannot end a call early.
"""

from __future__ import annotations

import secrets
import select
import shlex
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from docker import APIClient

from cwm_agent.sandbox.errors import SessionStartError

Failure = Literal["terminated", "timeout", "output"]

# The driver loop. $1/$2 are the sentinel halves; `u` commands are the user's
# (their exit status is kept and handed to the next one as `$?`), `q` commands
# are the host's own queries and leave that status alone.
_DRIVER = r"""
exec 2>&1
__cwm_a=$1 __cwm_b=$2 __cwm_rc=0
__cwm_ret() { return "$1"; }
while IFS= builtin read -r -d '' __cwm_kind && IFS= builtin read -r -d '' __cwm_cmd; do
  if [ "$__cwm_kind" = u ]; then
    __cwm_ret "$__cwm_rc"
    eval "$__cwm_cmd" </dev/null
    __cwm_rc=$?
    builtin printf '%s%s%d\n' "$__cwm_a" "$__cwm_b" "$__cwm_rc"
  else
    eval "$__cwm_cmd" </dev/null
    builtin printf '%s%s%d\n' "$__cwm_a" "$__cwm_b" "$?"
  fi
done
"""

_STDOUT, _STDERR = 1, 2
_QUERY_TIMEOUT_S = 30.0
_POLL_S = 0.5  # longest wait before noticing that another thread closed the session


@dataclass(frozen=True)
class ShellResult:
    """One call: its output, exit code (None when the session broke) and duration."""

    output: str
    exit_code: int | None
    duration_s: float
    failure: Failure | None = None


@dataclass
class _Stream:
    """Demultiplexes docker's framed exec stream (8-byte header per frame)."""

    sock: socket.socket
    pending: bytearray = field(default_factory=bytearray)
    data: bytearray = field(default_factory=bytearray)
    eof: bool = False

    def read_some(self, timeout: float) -> bool:
        """Wait up to `timeout` for bytes; False on timeout. A socket closed under us
        (another thread ended the session) reads as the end of the stream."""
        try:
            ready, _, _ = select.select([self.sock], [], [], max(timeout, 0.0))
            if not ready:
                return False
            chunk = self.sock.recv(1 << 16)
        except (OSError, ValueError):
            chunk = b""
        if not chunk:
            self.eof = True
            return True
        self.pending += chunk
        while len(self.pending) >= 8:
            kind, size = struct.unpack(">BxxxL", self.pending[:8])
            if len(self.pending) < 8 + size:
                break
            if kind in (_STDOUT, _STDERR):
                self.data += self.pending[8 : 8 + size]
            del self.pending[: 8 + size]
        return True


class ShellSession:
    """A restartable bash session in a running container."""

    def __init__(
        self,
        api: APIClient,
        container_id: str,
        *,
        workdir: str,
        startup: Sequence[str] = (),
        timeout: float = 120.0,
        output_cap: int = 480 * 1024,
        user: str | None = None,
    ) -> None:
        self.api = api
        self.container_id = container_id
        self.workdir = workdir
        self.startup = list(startup)
        self.timeout = timeout
        self.output_cap = output_cap
        self.user = user
        self.history: list[ShellResult] = []
        self._stream: _Stream | None = None
        self._pid: int | None = None
        self._halves = ("", "")

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Open a fresh shell in the start directory and run the start-up commands."""
        a, b = f"__CWM_{secrets.token_hex(8)}", f"{secrets.token_hex(8)}_RC="
        self._halves = (a, b)
        exec_id = self.api.exec_create(
            self.container_id,
            ["bash", "-c", _DRIVER, "bash", a, b],
            stdin=True,
            workdir=self.workdir,
            user=self.user or "",
        )["Id"]
        sock = self.api.exec_start(exec_id, socket=True)
        self._stream = _Stream(getattr(sock, "_sock", sock))
        setup = [*self.startup, f"cd {shlex.quote(self.workdir)}"] if self.startup else []
        for command in setup:  # start-up commands may cd elsewhere; every session starts here
            result = self._call("q", command, _QUERY_TIMEOUT_S)
            if result.exit_code != 0:
                self.close()
                raise SessionStartError(
                    f"start-up command {command!r} failed (exit {result.exit_code}): "
                    f"{result.output.strip()[-300:]}: fix the command or the image"
                )
        pid = self._value("$$")
        if pid is None or not pid.isdigit():
            self.close()
            raise SessionStartError(
                f"the shell in {self.workdir} ended as soon as it started: does the directory "
                "exist, and can the container still start processes?"
            )
        self._pid = int(pid)

    def restart(self) -> None:
        self.close()
        self.start()

    def close(self) -> None:
        """Kill the shell and everything in its process group (background jobs too).

        Our end of the pipe is closed first: a command flooding output would
        otherwise keep docker's copy loop blocked on us.
        """
        if self._stream is None:
            return
        self._stream.sock.close()
        self._stream = None
        if self._pid is not None:
            pid, self._pid = self._pid, None
            try:
                kill = self.api.exec_create(
                    self.container_id, ["bash", "-c", f"kill -9 -- -{pid} 2>/dev/null"]
                )
                # Not waited for: the next session has a process group of its own, and
                # docker can report such an exec as running long after it ended.
                self.api.exec_start(kill["Id"], detach=True)
            except Exception:  # the container may already be gone
                pass

    # -- calls -------------------------------------------------------------

    def run(self, command: str, timeout: float | None = None) -> ShellResult:
        """Run the model's command; on timeout, overflow or a dead shell, restart."""
        result = self._call("u", command, self.timeout if timeout is None else timeout)
        if result.failure is not None:
            self.restart()
        self.history.append(result)
        return result

    def query(self, expression: str) -> str:
        """The value of a shell expression (e.g. `"$PWD"`), leaving the user's `$?` alone.

        A session that broke is restarted and the query fails; a session that
        cannot restart raises `SessionStartError` instead of looping.
        """
        value = self._value(expression)
        if value is None:
            self.restart()
            raise SessionStartError(f"the session broke while reading {expression}")
        return value

    def _value(self, expression: str) -> str | None:
        # One printf writes the frame and the value together, so output of a
        # background job can only come before the frame, where it is cut off.
        result = self._call("q", f'builtin printf %s%s "$__cwm_a" {expression}', _QUERY_TIMEOUT_S)
        if result.failure is not None:
            return None
        return result.output.rpartition(self._halves[0])[2]

    def _call(self, kind: str, command: str, timeout: float) -> ShellResult:
        if self._stream is None:
            self.start()
        stream = self._stream
        assert stream is not None
        started = time.monotonic()
        deadline = started + timeout
        payload = f"{kind}\0{command.replace(chr(0), '')}\0".encode("utf-8", "surrogateescape")
        try:
            stream.sock.sendall(payload)
        except OSError:
            return ShellResult("", None, time.monotonic() - started, "terminated")
        marker = "".join(self._halves).encode()
        scanned = 0
        while True:
            at = stream.data.find(marker, max(scanned - len(marker), 0))
            if at >= 0:
                end = stream.data.find(b"\n", at)
                if end >= 0:
                    code = int(stream.data[at + len(marker) : end])
                    output = bytes(stream.data[:at])
                    del stream.data[: end + 1]
                    if len(output) > self.output_cap:
                        return ShellResult("", None, time.monotonic() - started, "output")
                    return ShellResult(_decode(output), code, time.monotonic() - started)
            scanned = len(stream.data)
            if scanned > self.output_cap + len(marker) + 12:
                return ShellResult("", None, time.monotonic() - started, "output")
            if stream.eof:
                return ShellResult("", None, time.monotonic() - started, "terminated")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ShellResult("", None, time.monotonic() - started, "timeout")
            # In slices: closing the socket from another thread does not wake select.
            stream.read_some(min(remaining, _POLL_S))


def _decode(raw: bytes) -> str:
    """Model-facing text: invalid UTF-8 becomes U+FFFD instead of raising."""
    return raw.decode("utf-8", "replace")
