"""`swebench run` through the faults of what it leans on: the model's server killed
mid-batch (a real `cwm-agent serve` of the tiny random model, really killed and
started again), and Docker creating containers slowly while an interrupt lands."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests import helpers
from tests.conftest import run_cli, start_cli
from tests.helpers import batch_containers, predictions, run_args
from tests.slow_docker import SlowDocker

calc, calc_image = helpers.calc, helpers.calc_image
dataset, replays = helpers.dataset, helpers.replays

pytestmark = pytest.mark.docker

IDS = ["calc__calc-1", "calc__calc-2", "calc__calc-3"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """`cwm-agent serve` of the tiny model on a fixed port, killed and started at will."""

    def __init__(self, model: Path) -> None:
        self.model, self.port = model, free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def spec(self) -> str:
        return f"openai:http://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = ("serve", "--model", str(self.model), "--offline", "--port", str(self.port))
        self.process = start_cli(*args)
        assert self.process.stdout is not None
        for line in self.process.stdout:  # "loading ...", then "serving ..." once it listens
            if line.startswith("serving "):
                return
        raise AssertionError(self.process.communicate(timeout=30)[1])

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # as a crash or an OOM kill would
        self.process.communicate(timeout=30)


@pytest.fixture
def server(tiny_cwm_dir: Path) -> Iterator[Server]:
    served = Server(tiny_cwm_dir)
    served.start()
    yield served
    if served.process is not None and served.process.poll() is None:
        served.kill()


def served_args(server: Server, dataset: Path, output: Path) -> list[str]:
    return [
        "swebench", "run", "--dataset", str(dataset), "--model", server.spec,
        "--output", str(output), "--instances", ",".join(IDS), "--greedy",
        "--max-turns", "2", "--max-reply-tokens", "16", "--quiet",
    ]  # fmt: skip


def start_then_lose_the_server(
    server: Server, args: list[str], output: Path, retries: int
) -> subprocess.Popen[str]:
    """The batch under way, its first instance done, and then the server killed."""
    run = start_cli(*args, env={"CWM_AGENT_API_RETRIES": str(retries)})
    deadline = time.monotonic() + 180
    while not (output / "predictions.jsonl").exists():
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.05)
    server.kill()
    return run


def results(output: Path) -> dict[str, dict[str, object]]:
    return {
        path.parent.name: json.loads(path.read_text())
        for path in output.glob("trajectories/*/result.json")
    }


def test_a_server_restarted_mid_batch_is_waited_for(
    server: Server, dataset: Path, tmp_path: Path, client: docker.DockerClient
) -> None:
    output = tmp_path / "restarted"
    run = start_then_lose_the_server(server, served_args(server, dataset, output), output, 8)
    server.start()  # back within the retries' minute or more
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err + out
    assert sorted(p["instance_id"] for p in predictions(output)) == IDS
    assert all(r["status"] != "error" for r in results(output).values())
    assert batch_containers(client, output) == []


def test_a_server_gone_errors_its_instances_not_the_batch_and_resume_completes(
    server: Server, dataset: Path, tmp_path: Path, client: docker.DockerClient
) -> None:
    output = tmp_path / "gone"
    args = served_args(server, dataset, output)
    run = start_then_lose_the_server(server, args, output, 1)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 1, err + out
    assert "Traceback" not in err and err.endswith("ended in an error\n"), err
    before = predictions(output)
    ran = results(output)
    errored = sorted(i for i, r in ran.items() if r["status"] == "error")
    assert errored and len(before) + len(errored) == len(IDS) == len(ran)
    for instance in errored:
        assert ran[instance]["error"] == "model", ran[instance]
        assert "no answer after 2 attempts: cannot connect" in str(ran[instance]["reason"])
    assert batch_containers(client, output) == []

    server.start()
    again = run_cli(*args, "--resume")
    assert again.returncode == 0, again.stderr + again.stdout
    after = predictions(output)
    assert after[: len(before)] == before
    assert sorted(p["instance_id"] for p in after) == IDS  # each exactly once


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_while_docker_creates_slowly_is_not_held_up_by_it(
    dataset: Path, replays: Path, tmp_path: Path, client: docker.DockerClient, sig: int
) -> None:
    """Three creates held by the daemon (a proxy before it holds them) when the signal
    lands: the run ends without waiting for them, and the containers the daemon makes
    afterwards are removed as they appear."""
    proxy = SlowDocker(tmp_path, hold_creates=True)
    output = tmp_path / f"slow-{uuid.uuid4().hex[:8]}"  # its name labels the batch
    args = run_args(dataset, replays, output, "--instances", ",".join(IDS))
    process = start_cli(*args, "--workers", "3", env={"DOCKER_HOST": proxy.url})
    try:
        deadline = time.monotonic() + 120
        while proxy.creates_held < len(IDS):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        process.send_signal(sig)
        try:
            _, err = process.communicate(timeout=30)  # the creates are held far longer
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail("the interrupt waited for Docker's creates")
        assert process.returncode == 130, err
        assert err.splitlines() == [
            "interrupted: containers removed; 3 more that Docker is still creating "
            "are removed as they appear"
        ]
        proxy.release()  # the daemon makes the containers only now
        deadline = time.monotonic() + 60
        while proxy.creates_made < len(IDS):
            assert time.monotonic() < deadline, "the held creates were not made"
            time.sleep(0.05)
        while batch_containers(client, output) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert batch_containers(client, output) == [], "what Docker made late was left"
    finally:
        proxy.close()
        deadline = time.monotonic() + 60
        while proxy.creates_made < proxy.creates_held and time.monotonic() < deadline:
            time.sleep(0.05)
        for container in batch_containers(client, output):
            client.api.remove_container(container, force=True)
