"""`cwm-agent doctor` and `cwm-agent cleanup` against a real engine."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest
import requests
from docker.errors import APIError

from cwm_agent.errors import first_line
from cwm_agent.sandbox import LABEL
from tests.conftest import default_signals
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


def test_docker_errors_keep_their_cause_when_shortened() -> None:
    """Issue 13.6: Docker's cause comes after a long URL; cutting at 200 characters lost it."""
    url = "http+docker://localhost/v1.41/containers/" + "0" * 64 + "/archive?path=%2Ftestbed"
    cause = 'invalid symlink "/testbed/docs/shared" -> "../../common/guide.md"'
    response = requests.Response()
    response.status_code = 500
    error = APIError(f"500 Server Error for {url}", response, explanation=cause)
    assert first_line(error) == cause
    shortened = first_line(RuntimeError("x" * 400 + " because the disk is full"))
    assert shortened.endswith("because the disk is full") and len(shortened) <= 300


def test_ctrl_c_while_the_cli_loads_is_one_line() -> None:
    """Importing the CLI takes a while; a Ctrl-C then is no traceback. Python's import
    log says when the CLI's own modules have begun to load: the signal lands then."""
    command = Path(sys.executable).parent / "cwm-agent"  # the installed entry point
    process = subprocess.Popen(
        [str(command), "doctor"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
        preexec_fn=default_signals,
    )
    assert process.stderr is not None
    for line in process.stderr:  # "import time: self | cumulative | module"
        if line.startswith("import time:") and line.split("|")[-1].strip() == "cwm_agent.errors":
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    said = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert (process.returncode, out, said) == (130, "", ["interrupted: nothing had started"])


@pytest.mark.parametrize("command", [("fix",), ("ci",), ("swebench", "run"), ("swebench", "eval")])
def test_a_bad_config_file_is_one_line_naming_the_key_and_the_file(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """No container starts: the file is checked while the flags are parsed."""
    config = tmp_path / "settings.toml"
    for text, message in (
        ("maxturns = 64\n", "unknown key 'maxturns': the keys are the long flags of"),
        ('workers = "2"\n' if "swebench" in command else "image = 3\n", "Input should be a valid"),
        ("[section\n", "is not valid TOML"),
    ):
        config.write_text(text)
        done = cli(*command, "--config", str(config))
        assert done.returncode == 1 and done.stdout == "", done.stderr
        assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
        assert str(config) in done.stderr and done.stderr.startswith("error: ")
        if "unknown" not in message and "TOML" not in message:
            assert done.stderr.startswith(f"error: {config}: {text.split(' =')[0]} = ")


def test_a_config_value_is_checked_by_the_config_model_its_flag_fills(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text("max_turns = 0\n")  # RolloutConfig: max_turns >= 1
    done = cli("fix", "--config", str(config), "--issue", "x")
    assert done.returncode == 1
    assert done.stderr == (
        f"error: {config}: max_turns = 0: Input should be greater than or equal to 1\n"
    )
