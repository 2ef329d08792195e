"""A sandbox: one labelled, resource-limited container plus its shell session.

Leaks are prevented three ways, from most to least graceful:
1. `with Sandbox(...)`, exceptions, Ctrl-C and SIGTERM/SIGHUP (see teardown.py)
   remove the container;
2. the container's main process is a bash that reads the stdin we hold open
   (`StdinOnce`): if our process dies, even by SIGKILL, the kernel closes that
   socket, bash exits and docker's auto-remove deletes the container;
3. `cwm-agent cleanup` removes anything still carrying our label (e.g. after
   the daemon itself restarted).
"""

from __future__ import annotations

import base64
import io
import json
import os
import posixpath
import socket
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import docker
from docker import APIClient
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from cwm_agent.errors import first_line
from cwm_agent.sandbox import teardown
from cwm_agent.sandbox.config import SandboxConfig
from cwm_agent.sandbox.errors import (
    DockerUnavailableError,
    ImageNotFoundError,
    NoBashError,
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
            f"Docker image {image!r} not found: build or pull it "
            f"(e.g. `docker pull {image}`), or choose another with --image"
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
        self._creating = False

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
        except (DockerException, SandboxError) as exc:
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
            init=True,
            network_mode="bridge" if cfg.network else "none",
            mem_limit=cfg.memory,
            memswap_limit=cfg.memory,
            pids_limit=cfg.pids_limit,
            nano_cpus=int(cfg.cpus * 1e9),
            privileged=False,
            security_opt=["no-new-privileges"],
        )
        self._creating = True  # until the id is known, close() finds it by its run label
        self.id = self.api.create_container(
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
        )["Id"]
        self._creating = False
        sock = self.api.attach_socket(self.id, params={"stdin": 1, "stream": 1})
        self._keepalive = getattr(sock, "_sock", sock)
        self.api.start(self.id)
        self._ensure_dir(cfg.workdir)

    def close(self) -> None:
        """Remove the container; safe to call twice and from signal handlers."""
        if self.session is not None:
            self.session.close()
            self.session = None
        if self._creating:  # interrupted inside create_container: the id never came back
            self._creating = False
            for container in self.client.containers.list(
                all=True, filters={"label": f"{LABEL}.run={self.run_id}"}
            ):
                container.remove(force=True)
        if self.id is not None:
            try:
                self.api.remove_container(self.id, force=True)
            except NotFound:
                pass
            except APIError as exc:  # auto-remove got there first: wait for it below
                if "in progress" not in str(exc):
                    raise
            self._wait_removed(self.id)
            self.id = None
        if self._keepalive is not None:
            self._keepalive.close()
            self._keepalive = None
        teardown.unregister(self)

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

    def read(self, path: str) -> tuple[PathStat, bytes] | None:
        """A regular file's stat (symlinks followed) and bytes, or None if there is none."""
        stat = self.stat(path)
        if stat is None or stat.is_dir:
            return None
        stream, _ = self.api.get_archive(self.id, stat.path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            handle = tar.extractfile(member) if member is not None else None
            return stat, handle.read() if handle is not None else b""

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


def remove_leftovers(
    client: docker.DockerClient, *, everything: bool = False, label: str = LABEL
) -> list[str]:
    """Remove our containers whose owning process is gone (all of them with `everything`),
    among those carrying `label` (`key` or `key=value`).

    Owners are judged by the pid/host labels: a container made on another host
    is left alone unless `everything` is set.
    """
    removed = []
    for container in client.containers.list(all=True, filters={"label": [LABEL, label]}):
        labels = container.labels
        same_host = labels.get(f"{LABEL}.host") == socket.gethostname()
        pid = labels.get(f"{LABEL}.pid", "")
        if everything or (same_host and not _alive(int(pid) if pid.isdigit() else 0)):
            try:
                container.remove(force=True)
            except NotFound:
                continue
            except APIError as exc:  # already being removed (auto-remove)
                if exc.status_code != 409:
                    raise
                continue
            removed.append(container.short_id)
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
