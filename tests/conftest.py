"""Shared fixtures: a real Docker engine and the small images tests run in.

Docker tests are marked `docker`. Where no daemon answers they are skipped,
except under CI (`CI` set), where that is a failure: CI starts a real engine.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
from tokenizer_fixture import build_cwm_tokenizer
from transformers import PreTrainedTokenizerFast

from cwm_agent.sandbox import LABEL, Sandbox, SandboxConfig, SandboxError, docker_client

BASE_IMAGE = os.environ.get("CWM_AGENT_TEST_IMAGE", "cwm-base:bookworm")
BASE_IMAGE_SCRIPT = Path(__file__).parent.parent / "scripts" / "base-image.sh"
# Images the tests make are tagged per test session, so that sessions sharing one
# daemon (CI beside a developer, parallel worktrees) never remove each other's.
# (The pid, not a random id: this module is also imported as `tests.conftest`.)
SESSION_TAG = f"session-{os.getpid()}"


def test_image(name: str) -> str:
    """The name of an image this test session makes."""
    return f"cwm-agent-test/{name}:{SESSION_TAG}"


test_image.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test
BASH_ONLY_IMAGE = test_image("bash-only")
NO_BASH_IMAGE = test_image("no-bash")


@pytest.fixture(scope="session")
def client() -> docker.DockerClient:
    try:
        return docker_client()
    except SandboxError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Docker tests: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def base_image(client: docker.DockerClient) -> str:
    """The base image, once checked to hold what the tests run in it (by the script that
    builds it), so a wrong image of that name fails here with one line, not in `pgrep`."""
    if not client.images.list(name=BASE_IMAGE):
        pytest.fail(f"{BASE_IMAGE} is missing: run scripts/setup.sh")
    checked = subprocess.run(
        [str(BASE_IMAGE_SCRIPT), "--check", BASE_IMAGE], capture_output=True, text=True
    )
    if checked.returncode != 0:
        pytest.fail(checked.stderr.strip(), pytrace=False)
    return BASE_IMAGE


def _import(client: docker.DockerClient, files: dict[str, Path | bytes], name: str) -> None:
    """`docker import` a tiny image made of exactly these files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, source in files.items():
            if isinstance(source, Path):
                tar.add(source.resolve(), arcname=path.lstrip("/"))
            else:
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size = len(source)
                tar.addfile(info, io.BytesIO(source))
    repository, tag = name.rsplit(":", 1)
    client.api.import_image_from_data(
        buffer.getvalue(), repository=repository, tag=tag, changes=["ENV PATH=/bin:/usr/bin"]
    )


@pytest.fixture(scope="session")
def bash_only_image(client: docker.DockerClient) -> Iterator[str]:
    """An image with bash and its libraries and nothing else: no Python, no coreutils."""
    bash = Path("/bin/bash")
    libraries = subprocess.run(["ldd", str(bash)], capture_output=True, text=True, check=True)
    files: dict[str, Path | bytes] = {"/bin/bash": bash}
    for line in libraries.stdout.splitlines():
        path = line.split("=>")[-1].split("(")[0].strip()
        if path.startswith("/"):
            files[path] = Path(path)
    _import(client, files, BASH_ONLY_IMAGE)
    yield BASH_ONLY_IMAGE
    client.images.remove(BASH_ONLY_IMAGE, force=True)


@pytest.fixture(scope="session")
def no_bash_image(client: docker.DockerClient) -> Iterator[str]:
    _import(client, {"/README": b"no shell here\n"}, NO_BASH_IMAGE)
    yield NO_BASH_IMAGE
    client.images.remove(NO_BASH_IMAGE, force=True)


@pytest.fixture
def run_label() -> str:
    """A run id for one test, so it can check that nothing of its own is left."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`small_disk("128k")`: a new folder on a tmpfs of that size, so a test can fill
    a real disk (mounting needs root); each is unmounted at the test's end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk-{len(mounted)}"
        folder.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True
        )
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


STARTED: set[int] = set()  # pids of the cwm-agent processes this test session started


def default_signals() -> None:
    """`preexec_fn` of every child a test signals: the suite may run with SIGINT ignored
    (a background job, some CI runners), and a child would inherit that."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


def start_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[str]:
    """`cwm-agent ARGS` in a session of its own, so signals sent to it reach only it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cwm_agent.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
        start_new_session=True,
        preexec_fn=default_signals,
    )
    STARTED.add(process.pid)
    return process


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`cwm-agent ARGS` as a user runs it: a new process, its exit code and output."""
    process = start_cli(*args, env=env, cwd=cwd)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def started_containers(client: docker.DockerClient, label: str = LABEL) -> list[str]:
    """Containers carrying `label` made by a process this test session started (the
    daemon is shared: other people's runs carry the same labels)."""
    found = client.api.containers(all=True, filters={"label": label})
    return [
        c["Id"]
        for c in found
        if c["Labels"].get(f"{LABEL}.pid", "").isdigit()
        and int(c["Labels"][f"{LABEL}.pid"]) in STARTED
    ]


def containers_of(client: docker.DockerClient, run: str) -> list[str]:
    found = client.containers.list(all=True, filters={"label": f"{LABEL}.run={run}"})
    return [container.id for container in found]
    return True


@pytest.fixture
def sandbox(client: docker.DockerClient, base_image: str, run_label: str) -> Iterator[Sandbox]:
    config = SandboxConfig(
        image=base_image, workdir="/testbed", session_timeout=5, labels={f"{LABEL}.run": run_label}
    )
    with Sandbox(config, client) as box:
        yield box
    assert containers_of(client, run_label) == []


@pytest.fixture(scope="session")
def cwm_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny tokenizer with CWM's special tokens, built offline (tests/tokenizer_fixture.py)."""
    return build_cwm_tokenizer()


@pytest.fixture(scope="session")
def tiny_cwm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CWM checkpoint with the fixture tokenizer (tests/tiny_model.py)."""
    from tiny_model import build_tiny_cwm_dir

    return build_tiny_cwm_dir(tmp_path_factory.mktemp("tiny-cwm"))
