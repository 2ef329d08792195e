"""`cwm-agent doctor` and `cwm-agent cleanup` against a real engine."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import uuid

import docker
import pytest

from cwm_agent.sandbox import LABEL
from tests.conftest import run_cli as cli

pytestmark = pytest.mark.docker


def test_doctor_reports_and_fails_without_docker(base_image: str) -> None:
    good = cli("doctor", "--image", base_image, "--model", "replay:examples/calc/replay.json")
    assert good.returncode == 0, good.stdout
    assert "docker daemon" in good.stdout and "present" in good.stdout
    missing = cli("doctor", "--image", "cwm-agent-test/absent:nope")
    assert missing.returncode == 1 and "missing" in missing.stdout
    no_docker = cli("doctor", env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert no_docker.returncode == 1
    assert "cannot reach the Docker daemon" in no_docker.stdout


def test_cleanup_removes_only_orphans(client: docker.DockerClient, base_image: str) -> None:
    finished = subprocess.run(["true"], check=True)
    dead_pid = str(subprocess.Popen(["true"]).pid)
    assert finished.returncode == 0
    made = {}
    run = f"cleanup-test-{uuid.uuid4().hex[:8]}"  # only this test's: the daemon may be shared
    for name, pid in (("orphan", dead_pid), ("live", str(os.getpid()))):
        container = client.containers.create(
            base_image,
            ["bash"],
            labels={
                LABEL: "1",
                f"{LABEL}.pid": pid,
                f"{LABEL}.host": socket.gethostname(),
                f"{LABEL}.run": run,
            },
        )
        made[name] = container.id
    try:
        done = cli("cleanup", "--run", run)
        assert done.returncode == 0 and "removed 1 container(s)" in done.stdout
        remaining = {c.id for c in client.containers.list(all=True, filters={"label": LABEL})}
        assert made["orphan"] not in remaining and made["live"] in remaining
        assert cli("cleanup", "--all", "--run", run).returncode == 0
        remaining = {c.id for c in client.containers.list(all=True, filters={"label": LABEL})}
        assert made["live"] not in remaining
    finally:
        for container_id in made.values():
            with contextlib.suppress(docker.errors.NotFound):
                client.containers.get(container_id).remove(force=True)
