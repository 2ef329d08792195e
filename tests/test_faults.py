"""Faults a long run meets, on real Docker and real file systems (issue 23).

- The Docker daemon lost mid-run: the commands talk to the daemon through a
  unix-socket proxy (tests/docker_proxy.py, its own process) that the test
  kills, so the real daemon and other runs go on.
- A full disk: the output folder is a small tmpfs mounted for the test (root).
- A base image of the right name and the wrong content.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from cwm_agent.sandbox import LABEL, Sandbox, SandboxConfig
from tests import helpers
from tests.conftest import BASE_IMAGE_SCRIPT, containers_of, run_cli, start_cli, test_image
from tests.helpers import (
    CALC_EXAMPLE,
    call,
    committed_copy,
    fix_args,
    fix_containers,
    predictions,
    run_args,
    write_patch,
)

calc, calc_image = helpers.calc, helpers.calc_image

pytestmark = pytest.mark.docker

PROXY = Path(__file__).parent / "docker_proxy.py"
SUBMIT = [call("submit", "/tmp/fix.patch"), "Submitted.\n</think>\n\nDone."]
SLEEP = call("bash", "sleep 120")  # in flight when the daemon goes


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_replays(folder: Path, scripts: dict[str, list[str]]) -> Path:
    """One replay file per instance (`folder` made if need be, files replaced)."""
    folder.mkdir(exist_ok=True)
    for instance_id, script in scripts.items():
        (folder / f"{instance_id}.json").write_text(json.dumps(script))
    return folder


def gold_predictions(path: Path, gold: dict[str, str]) -> Path:
    rows = [
        {"instance_id": i, "model_name_or_path": "m", "model_patch": p} for i, p in gold.items()
    ]
    return write_jsonl(path, rows)  # type: ignore[arg-type]


def wait_for(condition: Callable[[], object], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


class DockerProxy:
    """The daemon at `host`, as long as this proxy process lives."""

    def __init__(self, folder: Path) -> None:
        self.socket = folder / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, str(PROXY), str(self.socket)], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None and self.process.stdout.readline() == "ready\n"

    def kill(self) -> None:
        """The daemon is lost: every connection through the proxy breaks at once."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[DockerProxy]:
    folder = tmp_path / "proxy"
    folder.mkdir()
    proxy = DockerProxy(folder)
    proxy.start()
    yield proxy
    if proxy.process is not None:
        proxy.kill()


def assert_daemon_line(stderr: str, proxy: DockerProxy, then: str) -> None:
    """One line naming the daemon and what to do: no raw exception, no traceback."""
    assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr
    assert "ConnectionError" not in stderr and "Connection aborted" not in stderr, stderr
    [line] = stderr.splitlines()
    assert line.startswith(f"error: lost the Docker daemon at {proxy.host} ("), stderr
    assert then in line, line


def labelled(client: docker.DockerClient, *labels: str) -> list[str]:
    """Ids of the containers carrying every label, from the plain listing (docker-py's
    `containers.list` inspects each one, and fails on one removed meanwhile)."""
    return [c["Id"] for c in client.api.containers(all=True, filters={"label": list(labels)})]


def trajectory_holds(folder: Path, text: str) -> bool:
    try:
        return text in (folder / "trajectory.json").read_text()
    except OSError:
        return False


# -- the daemon lost -------------------------------------------------------------


def test_a_lost_daemon_ends_the_sandbox_threads_quietly(
    base_image: str, run_label: str, client: docker.DockerClient, proxy: DockerProxy
) -> None:
    """The disk watchdog polls the daemon every second from a thread of its own: a lost
    daemon ends it without an exception, and closing the sandbox raises nothing."""
    raised: list[threading.ExceptHookArgs] = []
    hook, threading.excepthook = threading.excepthook, raised.append
    try:
        config = SandboxConfig(image=base_image, labels={f"{LABEL}.run": run_label})
        box = Sandbox(config, docker.DockerClient(base_url=proxy.host))
        box.start()
        watchdog = next(t for t in threading.enumerate() if t.name == "cwm-agent-disk")
        proxy.kill()
        watchdog.join(timeout=30)
        assert not watchdog.is_alive()
        box.close()
    finally:
        threading.excepthook = hook
    assert [(r.thread.name if r.thread else "", r.exc_type) for r in raised] == []
    wait_for(lambda: containers_of(client, run_label) == [], "the sandbox's container to go")


def test_a_lost_daemon_ends_the_batch_in_one_line_and_resume_finishes_it(
    calc: dict[str, object],
    calc_image: str,
    tmp_path: Path,
    client: docker.DockerClient,
    proxy: DockerProxy,
) -> None:
    gold: dict[str, str] = calc["gold"]  # type: ignore[assignment]
    ids = list(gold)
    dataset = write_jsonl(tmp_path / "dataset.jsonl", calc["rows"])  # type: ignore[arg-type]
    replays = write_replays(tmp_path / "replays", {i: [SLEEP] for i in ids})  # all in flight
    output = tmp_path / "run"
    args = run_args(dataset, replays, output, "--workers", str(len(ids)))
    batch = start_cli(*args, env=proxy.env)
    folders = [output / "trajectories" / i for i in ids]
    wait_for(lambda: all(trajectory_holds(f, "sleep 120") for f in folders), "every instance")
    # The label `cleanup --run` finds them by.
    assert len(labelled(client, f"{LABEL}.run={output.name}")) == len(ids)
    proxy.kill()
    out, err = batch.communicate(timeout=120)
    assert batch.returncode == 1, out + err
    assert_daemon_line(err, proxy, "--resume")
    for folder in folders:  # each in flight: an error with its result.json
        result = json.loads((folder / "result.json").read_text())
        assert result["status"] == "error" and "lost the Docker daemon" in result["reason"]
    assert not (output / "predictions.jsonl").exists() or predictions(output) == []
    # The real daemon never went away: the run's containers go on their own.
    of_run = f"{LABEL}.swebench={output.name}"
    wait_for(lambda: labelled(client, of_run) == [], "the run's containers to go")

    proxy.start()  # the daemon answers again
    write_replays(replays, {i: [write_patch(gold[i]), *SUBMIT] for i in ids})
    resumed = run_cli(*args, "--resume", env=proxy.env)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    lines = predictions(output)
    assert sorted(p["instance_id"] for p in lines) == sorted(ids)  # each once
    assert all(p["model_patch"] == gold[p["instance_id"]] for p in lines)
    assert labelled(client, f"{LABEL}.swebench={output.name}") == []


def test_a_lost_daemon_during_fix_leaves_result_json_and_one_line(
    tmp_path: Path, client: docker.DockerClient, base_image: str, proxy: DockerProxy
) -> None:
    repo = committed_copy(CALC_EXAMPLE / "repo", tmp_path / "repo")
    replay = tmp_path / "replay.json"
    replay.write_text(json.dumps([SLEEP]))
    output = tmp_path / "out"
    fixing = start_cli(*fix_args(repo, base_image, output, f"replay:{replay}"), env=proxy.env)
    wait_for(lambda: trajectory_holds(output, "sleep 120"), "the rollout's sleep")
    proxy.kill()
    out, err = fixing.communicate(timeout=120)
    assert fixing.returncode == 1, out + err
    assert_daemon_line(err, proxy, "fix")
    result = json.loads((output / "result.json").read_text())
    assert result["status"] == "error" and not result["success"]
    assert "lost the Docker daemon" in result["reason"]
    assert not list(output.glob("*.tmp"))
    wait_for(lambda: fix_containers(client) == [], "fix's container to go")


def test_a_lost_daemon_during_eval_records_errors_and_one_line(
    calc: dict[str, object],
    calc_image: str,
    tmp_path: Path,
    client: docker.DockerClient,
    proxy: DockerProxy,
) -> None:
    rows: list[dict[str, object]] = calc["rows"]  # type: ignore[assignment]
    slow = [{**row, "test_cmd": f"sleep 120; {row['test_cmd']}"} for row in rows]
    dataset = write_jsonl(tmp_path / "dataset.jsonl", slow)
    gold: dict[str, str] = calc["gold"]  # type: ignore[assignment]
    predicted = gold_predictions(tmp_path / "predictions.jsonl", gold)
    grading = start_cli(
        "swebench", "eval", "--predictions", str(predicted), "--dataset", str(dataset),
        "--workers", str(len(gold)), "--quiet", env=proxy.env,
    )  # fmt: skip
    folders = [tmp_path / "eval" / i for i in gold]
    wait_for(lambda: all((f / "eval.sh").exists() for f in folders), "every instance's tests")
    proxy.kill()
    out, err = grading.communicate(timeout=120)
    assert grading.returncode == 1, out + err
    assert_daemon_line(err, proxy, "eval")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["counts"]["error"] == len(gold)
    assert all("lost the Docker daemon" in r["reason"] for r in report["instances"].values())
    grades = f"{LABEL}.swebench={report['run_id']}"
    wait_for(
        lambda: labelled(client, grades) == [],
        "eval's containers to go",
    )


def test_a_lost_daemon_during_trace_is_one_line(
    tmp_path: Path, client: docker.DockerClient, base_image: str, proxy: DockerProxy
) -> None:
    program = tmp_path / "slow.py"
    program.write_text("import time\n\n\ndef f():\n    time.sleep(60)\n    return 1\n")
    tracing = start_cli(
        "trace", str(program), "--function", "f", "--actual", "--image", base_image,
        "--timeout", "120", env=proxy.env,
    )  # fmt: skip

    mine = ("cwm-agent.purpose=trace", f"{LABEL}.pid={tracing.pid}")

    def tracer_running() -> bool:
        for found in labelled(client, *mine):
            # Listed but not running yet (409), or gone since (404): look again.
            with contextlib.suppress(docker.errors.APIError):
                if "--batch" in str(client.api.top(found)["Processes"]):
                    return True
        return False

    wait_for(tracer_running, "the tracer to run")
    proxy.kill()
    out, err = tracing.communicate(timeout=120)
    assert tracing.returncode == 1, out + err
    assert_daemon_line(err, proxy, "run the command again")
    wait_for(
        lambda: labelled(client, *mine) == [],
        "the tracer's container to go",
    )


# -- a full disk -----------------------------------------------------------------

BIG_OUTPUT = call("bash", "head -c 60000 /dev/zero | tr '\\0' a")  # a large trajectory


def assert_disk_line(stderr: str, folder: Path) -> None:
    """One line naming a file under `folder` and saying the disk is full."""
    assert "Traceback" not in stderr and "Errno" not in stderr, stderr
    [line] = stderr.splitlines()
    assert line.startswith(f"error: the disk is full: cannot write {folder}/"), stderr


def assert_nothing_partial(folder: Path) -> None:
    """No temporary file left, and every file a reader takes for whole parses whole."""
    assert list(folder.rglob("*.tmp")) == []
    for path in folder.rglob("*.json"):
        json.loads(path.read_text())
    for path in folder.rglob("*.jsonl"):
        assert all(json.loads(line) for line in path.read_text().splitlines())
        assert path.read_text().endswith("\n") or path.read_text() == ""


def test_a_full_disk_ends_the_batch_in_one_line_and_resume_finishes_it(
    calc: dict[str, object],
    calc_image: str,
    tmp_path: Path,
    client: docker.DockerClient,
    small_disk: Callable[[str], Path],
) -> None:
    gold: dict[str, str] = calc["gold"]  # type: ignore[assignment]
    dataset = write_jsonl(tmp_path / "dataset.jsonl", calc["rows"])  # type: ignore[arg-type]
    scripts = {i: [BIG_OUTPUT, write_patch(patch), *SUBMIT] for i, patch in gold.items()}
    replays = write_replays(tmp_path / "replays", scripts)
    disk = small_disk("160k")
    output = disk / "run"
    args = run_args(dataset, replays, output)
    done = run_cli(*args)
    assert done.returncode == 1, done.stderr + done.stdout
    assert_disk_line(done.stderr, output)
    assert_nothing_partial(output)
    assert labelled(client, f"{LABEL}.swebench={output.name}") == []

    subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)  # space again
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert sorted(p["instance_id"] for p in predictions(output)) == sorted(gold)
    assert all(p["model_patch"] == gold[p["instance_id"]] for p in predictions(output))
    assert_nothing_partial(output)


def test_a_full_disk_during_fix_is_one_line(
    tmp_path: Path, base_image: str, small_disk: Callable[[str], Path]
) -> None:
    repo = committed_copy(CALC_EXAMPLE / "repo", tmp_path / "repo")
    replay = tmp_path / "replay.json"
    replay.write_text(json.dumps([BIG_OUTPUT, call("bash", "true")]))
    output = small_disk("96k") / "out"
    done = run_cli(*fix_args(repo, base_image, output, f"replay:{replay}"))
    assert done.returncode == 1, done.stderr + done.stdout
    assert_disk_line(done.stderr, output)
    assert_nothing_partial(output)


def test_a_full_disk_under_eval_output_is_one_line(
    calc: dict[str, object], calc_image: str, tmp_path: Path, small_disk: Callable[[str], Path]
) -> None:
    dataset = write_jsonl(tmp_path / "dataset.jsonl", calc["rows"])  # type: ignore[arg-type]
    gold: dict[str, str] = calc["gold"]  # type: ignore[assignment]
    predicted = gold_predictions(tmp_path / "predictions.jsonl", gold)
    output = small_disk("24k")
    graded = run_cli(
        "swebench", "eval", "--predictions", str(predicted), "--dataset", str(dataset),
        "--output", str(output), "--quiet",
    )  # fmt: skip
    assert graded.returncode == 1, graded.stderr + graded.stdout
    assert_disk_line(graded.stderr, output)
    assert_nothing_partial(output)


def test_a_full_disk_under_view_out_is_one_line(
    tmp_path: Path, base_image: str, small_disk: Callable[[str], Path]
) -> None:
    repo = committed_copy(CALC_EXAMPLE / "repo", tmp_path / "repo")
    run = tmp_path / "run"
    done = run_cli(*fix_args(repo, base_image, run, f"replay:{CALC_EXAMPLE / 'replay.json'}"))
    assert done.returncode == 0, done.stderr + done.stdout
    disk = small_disk("8k")
    shown = run_cli("view", str(run), "--out", str(disk / "index.html"))
    assert shown.returncode == 1, shown.stderr + shown.stdout
    assert_disk_line(shown.stderr, disk)
    assert list(disk.iterdir()) == []  # no index.html.tmp, and no half page


# -- a wrong base image ------------------------------------------------------------


@pytest.fixture
def without_procps(client: docker.DockerClient, base_image: str) -> Iterator[str]:
    """The base image as an older build or another tool's might be: no procps."""
    name = test_image("base-without-procps")
    container = client.containers.create(
        base_image, ["bash", "-c", "rm /usr/bin/pgrep /usr/bin/pkill /usr/bin/ps"]
    )
    try:
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 0
        container.commit(*name.split(":"))
    finally:
        container.remove(force=True)
    yield name
    client.images.remove(name, force=True)


def test_a_base_image_without_what_the_project_runs_is_one_line(without_procps: str) -> None:
    built = subprocess.run(
        [str(BASE_IMAGE_SCRIPT), without_procps], capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 1, built.stdout + built.stderr
    assert built.stderr == (
        f"base image {without_procps} lacks pgrep (procps), pkill (procps), ps (procps): it was "
        "built otherwise (an older build, another tool's); remove it (docker rmi "
        f"{without_procps}) and run scripts/base-image.sh again\n"
    )
    # The suite names it too, before any test can fail in `pgrep`.
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_sandbox.py::test_keepalive_survives_what_root_can_do_inside"],
        capture_output=True, text=True, timeout=300, cwd=BASE_IMAGE_SCRIPT.parent.parent,
        env={**os.environ, "CWM_AGENT_TEST_IMAGE": without_procps},
    )  # fmt: skip
    assert suite.returncode == 1, suite.stdout + suite.stderr
    assert f"base image {without_procps} lacks pgrep (procps)" in suite.stdout
    assert "pgrep: command not found" not in suite.stdout
