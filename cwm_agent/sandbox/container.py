"""A sandbox: one labelled, resource-limited container plus its shell session.

Leaks are prevented three ways, from most to least graceful:
1. `with Sandbox(...)`, exceptions, Ctrl-C and SIGTERM/SIGHUP (see teardown.py)
   remove the container;
2. the container's main process is a bash that reads the stdin we hold open
   (`StdinOnce`): if our process dies, even by SIGKILL, the kernel closes that
   socket, bash exits and docker's auto-remove deletes the container. That bash
   is the container's PID 1, which the kernel shields from every signal sent
   inside the container (`kill -9 -1`, `pkill bash` as root), and it reaps
   orphaned processes as an init would;
3. `cwm-agent cleanup` removes anything still carrying our label (e.g. after
   the daemon itself restarted).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import os
import posixpath
import socket
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import docker
from docker import APIClient
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.utils import parse_bytes
from requests import RequestException

from cwm_agent.errors import first_line
from cwm_agent.sandbox import teardown
from cwm_agent.sandbox.config import SandboxConfig
from cwm_agent.sandbox.disk import DiskWatchdog
from cwm_agent.sandbox.errors import (
    DockerUnavailableError,
    FileChangedError,
    FileTooLargeError,
    ImageNotFoundError,
    NoBashError,
    SandboxClosed,
    SandboxError,
)
from cwm_agent.sandbox.session import ShellSession

LABEL = "cwm-agent"  # on every container we create; `cwm-agent cleanup` looks for it
_KEEPALIVE = "while IFS= read -r _; do :; done"  # exits when our stdin socket closes


@dataclass(frozen=True)
class PathStat:
    """What docker's archive API says about a path (symlinks already resolved)."""

    path: str
    is_dir: bool
    size: int
    mode: int


def docker_client() -> docker.DockerClient:
    """A client for the configured daemon, or one clear error if none answers."""
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        host = os.environ.get("DOCKER_HOST", "the default socket")
        raise DockerUnavailableError(
            f"cannot reach the Docker daemon at {host} ({first_line(exc)}): "
            "start Docker (e.g. `dockerd &`) or set DOCKER_HOST"
        ) from None
    return client


def require_image(client: docker.DockerClient, image: str) -> None:
    """Fail with a line the user can act on when `image` is not present."""
    try:
        client.images.get(image)
    except ImageNotFound:
        raise ImageNotFoundError(
            f"Docker image {image!r} not found: build or pull it (e.g. `docker pull {image}`), "
            "or name another (fix and ci: --image; swebench run: --image-template)"
        ) from None


class Sandbox:
    """A running container with a persistent shell; use as a context manager."""

    def __init__(self, config: SandboxConfig, client: docker.DockerClient | None = None) -> None:
        self.config = config
        self.client = client or docker_client()
        self.api: APIClient = self.client.api
        self.id: str | None = None
        self.session: ShellSession | None = None
        self.run_id = config.labels.get(f"{LABEL}.run", uuid.uuid4().hex[:12])
        self._keepalive: socket.socket | None = None
        # The create request in flight; whoever pops it (atomic) owns what it makes.
        self._pending: list[Future[dict[str, str]]] = []
        self._woken = threading.Event()  # the create answered, or close() came first
        self._closed = False
        self._watchdog: DiskWatchdog | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Create and start the container, then open the shell session."""
        cfg = self.config
        require_image(self.client, cfg.image)
        teardown.register(self)
        try:
            self._create()
            self.session = ShellSession(
                self.api,
                self.id or "",
                workdir=cfg.workdir,
                startup=cfg.startup,
                timeout=cfg.session_timeout,
                output_cap=cfg.output_cap,
                user=cfg.user,
            )
            self.session.start()
        except SandboxClosed:
            self.close()
            raise
        except (DockerException, SandboxError) as exc:
            if self._closed:  # removed from under us by another thread (an interrupt)
                self.close()
                raise SandboxClosed(f"the sandbox was closed while it started: {exc}") from None
            created, running = self.id is not None, self._still_running(within=2.0)
            self.close()
            if not created:
                raise SandboxError(
                    f"cannot create a container from {cfg.image!r}: {first_line(exc)}"
                ) from None
            if not running:  # our entrypoint only ends at once if bash cannot run
                raise NoBashError(
                    f"the container from {cfg.image!r} exited at once: the image has no bash "
                    "on its PATH (the sandbox runs a bash session), so use one that has bash"
                ) from None
            if isinstance(exc, SandboxError):
                raise
            raise SandboxError(f"cannot start a sandbox from {cfg.image!r}: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _remove(self, container_id: str) -> None:
        try:
            self.api.remove_container(container_id, force=True)
        except NotFound:
            pass
        except APIError as exc:  # auto-remove got there first: wait for it below
            if "in progress" not in str(exc):
                raise
        self._wait_removed(container_id)

    def _wait_removed(self, container_id: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.api.inspect_container(container_id)
            except NotFound:
                return
            time.sleep(0.05)

    def _running(self) -> bool:
        try:
            return bool(self.id) and self.api.inspect_container(self.id)["State"]["Running"]
        except DockerException:
            return False

    def _still_running(self, within: float) -> bool:
        """Whether the container is still up after up to `within` seconds: without bash
        its init exits at once, but on a loaded machine not before our first exec fails."""
        deadline = time.monotonic() + within
        while self._running():
            if time.monotonic() > deadline:
                return True
            time.sleep(0.05)
        return False

    def _create(self) -> None:
        cfg = self.config
        labels = {
            LABEL: "1",
            f"{LABEL}.run": self.run_id,
            f"{LABEL}.pid": str(os.getpid()),
            f"{LABEL}.host": socket.gethostname(),
            **cfg.labels,
        }
        host_config = self.api.create_host_config(
            auto_remove=True,
            init=False,  # the keep-alive must be PID 1 (see the module docstring)
            network_mode="bridge" if cfg.network else "none",
            mem_limit=cfg.memory,
            memswap_limit=cfg.memory,
            pids_limit=cfg.pids_limit,
            nano_cpus=int(cfg.cpus * 1e9),
            privileged=False,
            security_opt=["no-new-privileges"],
        )
        # The request runs in a thread of its own, so an interrupt never lands inside it
        # and never waits for it (a loaded daemon takes half a minute and more): a sandbox
        # closed meanwhile leaves the request to teardown, which removes what it makes.
        pending: Future[dict[str, str]] = Future()
        self._pending.append(pending)
        pending.add_done_callback(lambda _: self._woken.set())
        threading.Thread(
            target=_settle,
            args=(
                pending,
                functools.partial(
                    self.api.create_container,
                    cfg.image,
                    entrypoint=["bash", "-c", _KEEPALIVE],
                    command=[],
                    stdin_open=True,
                    detach=False,  # with stdin_open: StdinOnce, our leak guard
                    environment=cfg.env,
                    labels=labels,
                    user=cfg.user or "",
                    network_disabled=not cfg.network,
                    host_config=host_config,
                ),
            ),
            name="cwm-agent-create",
            daemon=True,
        ).start()
        self._woken.wait()
        mine = self._take_pending()
        if mine is None or self._closed:  # close() came first (another thread, an interrupt)
            if mine is not None:
                teardown.remove_when_made(mine, self._remove)
            raise SandboxClosed("the sandbox was closed while its container was being created")
        self.id = mine.result()["Id"]
        if self._closed:  # closed just now: start() closes again, removing it by its id
            raise SandboxClosed("the sandbox was closed while its container was being created")
        sock = self.api.attach_socket(self.id, params={"stdin": 1, "stream": 1})
        self._keepalive = getattr(sock, "_sock", sock)
        self.api.start(self.id)
        if cfg.disk is not None:
            self._watchdog = DiskWatchdog(self.api, self.id, parse_bytes(cfg.disk))
            self._watchdog.start()
        self._ensure_dir(cfg.workdir)

    def close(self) -> None:
        """Remove the container; safe to call twice and from signal handlers."""
        self._closed = True
        self._woken.set()
        if self._watchdog is not None:
            self._watchdog.stop()
        if self.session is not None:
            self.session.close()
            self.session = None
        pending = self._take_pending()
        if pending is not None:  # closed while its container was being created
            teardown.remove_when_made(pending, self._remove)
        if self.id is not None:
            # A lost daemon cannot remove it now: the keep-alive closed below makes
            # the container end and remove itself once the daemon sees that.
            with contextlib.suppress(RequestException, ConnectionError):
                self._remove(self.id)
            self.id = None
        if self._keepalive is not None:
            self._keepalive.close()
            self._keepalive = None
        teardown.unregister(self)

    def _take_pending(self) -> Future[dict[str, str]] | None:
        try:
            return self._pending.pop()
        except IndexError:
            return None

    @property
    def closed(self) -> bool:
        """Closed (perhaps from another thread, on an interrupt): nothing more may run."""
        return self._closed

    @property
    def failure(self) -> str | None:
        """Why the sandbox stopped itself (its disk limit), if it did."""
        return self._watchdog.exceeded if self._watchdog is not None else None

    def exec(self, argv: list[str], workdir: str | None = None) -> tuple[int, bytes, bytes]:
        """Run a host-side helper beside the session (its state is not touched)."""
        exec_id = self.api.exec_create(
            self.id, argv, workdir=workdir or self.config.workdir, user=self.config.user or ""
        )["Id"]
        out, err = self.api.exec_start(exec_id, demux=True)
        code = self.api.exec_inspect(exec_id)["ExitCode"]
        return int(code), out or b"", err or b""

    # -- files -------------------------------------------------------------

    def copy_in(self, source: Path | IO[bytes], dest: str) -> None:
        """Copy a host directory (or an uncompressed tar stream) into `dest`."""
        self._ensure_dir(dest)
        if isinstance(source, Path):
            with tempfile.TemporaryFile() as buffer:
                with tarfile.open(fileobj=buffer, mode="w") as tar:
                    for entry in sorted(source.iterdir()):
                        tar.add(entry, arcname=entry.name)
                buffer.seek(0)
                self._put(dest, buffer)
        else:
            self._put(dest, source)

    def read_file(self, path: str) -> bytes:
        """Bytes of a regular file (symlinks followed); FileNotFoundError if absent."""
        found = self.read(path)
        if found is None:
            raise FileNotFoundError(path)
        return found[1]

    def read(self, path: str, limit: int | None = None) -> tuple[PathStat, bytes] | None:
        """A regular file's stat (symlinks followed) and bytes, or None if there is none.

        The host holds at most `limit` bytes of it (the container's memory limit
        does not apply here): a larger file raises `FileTooLargeError` before it is
        fetched, and the tar is streamed, never joined. A file that changes while
        it is read raises `FileChangedError`.
        """
        stat = self.stat(path)
        if stat is None or stat.is_dir:
            return None
        if limit is not None and stat.size > limit:
            raise FileTooLargeError(path, stat.size, limit)
        url = self.api._url("/containers/{0}/archive", self.id)
        response = self.api._get(url, params={"path": stat.path}, stream=True)
        with contextlib.closing(response):
            self.api._raise_for_status(response)
            try:
                chunks = io.BufferedReader(_Chunks(response.iter_content(1 << 16)))
                with tarfile.open(fileobj=chunks, mode="r|") as tar:
                    member = tar.next()
                    if member is None or not member.isfile():
                        return stat, b""
                    if limit is not None and member.size > limit:  # it grew since the stat
                        raise FileTooLargeError(path, member.size, limit)
                    handle = tar.extractfile(member)
                    return stat, handle.read() if handle is not None else b""
            except (tarfile.TarError, RequestException, OSError) as exc:
                raise FileChangedError(path, exc) from None

    def write_file(self, path: str, data: bytes, mode: int | None = None) -> None:
        """Write a file; without `mode`, an existing file keeps its permissions and
        symlinks are followed."""
        target = path
        if mode is None:  # callers that know the file pass its mode and save a round trip
            stat = self.stat(path)
            target, mode = (stat.path, stat.mode & 0o7777) if stat else (path, 0o644)
        info = tarfile.TarInfo(posixpath.basename(target))
        info.size = len(data)
        info.mtime = int(time.time())
        info.mode = mode
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.addfile(info, io.BytesIO(data))
        buffer.seek(0)
        self._put(posixpath.dirname(target) or "/", buffer)

    def stat(self, path: str) -> PathStat | None:
        """Stat through the archive API (HEAD): no shell, no Python needed inside."""
        url = self.api._url("/containers/{0}/archive", self.id)
        response = self.api.head(url, params={"path": path})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise SandboxError(f"cannot stat {path} in the container (HTTP {response.status_code})")
        info = json.loads(base64.b64decode(response.headers["X-Docker-Container-Path-Stat"]))
        resolved = info.get("linkTarget") or path
        if info.get("linkTarget"):
            return self.stat(resolved)
        mode = int(info["mode"])
        return PathStat(resolved, bool(mode & (1 << 31)), int(info["size"]), mode)

    def _put(self, dest: str, data: IO[bytes]) -> None:
        if not self.api.put_archive(self.id, dest, data):
            raise SandboxError(f"copying into {dest} failed")

    def _ensure_dir(self, path: str) -> None:
        """mkdir -p through the archive API (docker creates missing parents)."""
        stat = self.stat(path)
        if stat is not None:
            if not stat.is_dir:
                raise SandboxError(f"{path} exists in the container and is not a directory")
            return
        info = tarfile.TarInfo(path.strip("/"))
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.addfile(info)
        buffer.seek(0)
        self._put("/", buffer)


class _Chunks(io.RawIOBase):
    """A file over an iterator of byte chunks, so tarfile can stream a response."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._left:
            self._left = next(self._chunks, b"")
            if not self._left:
                return 0
        view = memoryview(buffer).cast("B")
        size = min(len(view), len(self._left))
        view[:size] = self._left[:size]
        self._left = self._left[size:]
        return size


def _settle(future: Future[dict[str, str]], call: Callable[[], dict[str, str]]) -> None:
    try:
        future.set_result(call())
    except BaseException as exc:
        future.set_exception(exc)


def owned_containers(client: docker.DockerClient) -> list[str]:
    """Our containers that this process made and that still exist."""
    labels = [f"{LABEL}.pid={os.getpid()}", f"{LABEL}.host={socket.gethostname()}"]
    return [
        found["Id"][:12] for found in client.api.containers(all=True, filters={"label": labels})
    ]


def remove_leftovers(
    client: docker.DockerClient, *, everything: bool = False, label: str = LABEL
) -> list[str]:
    """Remove our containers whose owning process is gone (all of them with `everything`),
    among those carrying `label` (`key` or `key=value`).

    Owners are judged by the pid/host labels: a container made on another host
    is left alone unless `everything` is set.
    """
    removed = []
    # The plain listing: the daemon is shared, and containers others remove while
    # we look must not fail the sweep (docker-py's list inspects each one).
    for container in client.api.containers(all=True, filters={"label": [LABEL, label]}):
        labels = container.get("Labels") or {}
        same_host = labels.get(f"{LABEL}.host") == socket.gethostname()
        pid = labels.get(f"{LABEL}.pid", "")
        if everything or (same_host and not _alive(int(pid) if pid.isdigit() else 0)):
            try:
                client.api.remove_container(container["Id"], force=True)
            except NotFound:
                continue
            except APIError as exc:  # already being removed (auto-remove)
                if exc.status_code != 409:
                    raise
                continue
            removed.append(container["Id"][:12])
    return removed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
