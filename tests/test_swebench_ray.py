"""`swebench run|eval --ray` on a real three-node Ray cluster on this machine.

The head offers no docker_slots and each of two worker nodes offers one, so
instances run only on the workers, one at a time each; all three nodes use
the one local Docker daemon. The SWE-style fixture of tests/helpers.py
(gold / wrong / empty / missing image) is graded as with the thread pool.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests import helpers
from tests.conftest import default_signals, run_cli, start_cli
from tests.helpers import batch_containers, predictions, run_args

# The SWE-style fixture's repository, image, dataset and replay policies.
calc, calc_image = helpers.calc, helpers.calc_image
dataset, replays = helpers.dataset, helpers.replays

# Token authentication, as remote clusters have it: the nodes and every driver of these
# tests hold the token. Set before Ray is imported, which reads the mode once.
TOKEN = "cwm-agent-test-" + "0" * 32
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = TOKEN
ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.docker

IDS = ["calc__calc-1", "calc__calc-2", "calc__calc-3"]


def add_worker(cluster: Cluster) -> object:
    return cluster.add_node(num_cpus=1, resources={"docker_slots": 1})


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    """A head and two sandbox nodes; nodes lost are noticed within a few seconds."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
        },
    )
    add_worker(cluster)
    add_worker(cluster)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def workers(cluster: Cluster) -> set[str]:
    return {node.node_id for node in cluster.worker_nodes}


def results(output: Path) -> dict[str, dict[str, object]]:
    return {
        path.parent.name: json.loads(path.read_text())
        for path in output.glob("trajectories/*/result.json")
    }


def grade(predicted: Path, dataset: Path, *extra: str) -> dict[str, object]:
    done = run_cli(
        "swebench", "eval", "--predictions", str(predicted), "--dataset", str(dataset),
        "--quiet", *extra,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads((predicted.parent / "report.json").read_text())


def test_cluster_run_and_eval_match_the_thread_pool(
    ray_cluster: Cluster,
    dataset: Path,
    replays: Path,
    tmp_path: Path,
    client: docker.DockerClient,
) -> None:
    threads, cluster = tmp_path / "threads", tmp_path / "cluster"
    done = run_cli(*run_args(dataset, replays, threads, "--workers", "2"))
    assert done.returncode == 1, done.stderr + done.stdout  # calc-4's missing image
    done = run_cli(*run_args(dataset, replays, cluster, "--ray", ray_cluster.address))
    assert done.returncode == 1, done.stderr + done.stdout  # calc-4's missing image
    assert "3 instance(s) finished, 1 error(s)" in done.stdout

    assert sorted(predictions(cluster), key=lambda p: p["instance_id"]) == sorted(
        predictions(threads), key=lambda p: p["instance_id"]
    )
    ran = results(cluster)
    same = ("status", "error", "rollout_status", "turns", "patch_bytes", "start")
    assert {i: [r[k] for k in same] for i, r in ran.items()} == {
        i: [r[k] for k in same] for i, r in results(threads).items()
    }
    # The driver wrote every instance's files, shipped from the node that ran it.
    for instance_id in IDS:
        names = {p.name for p in (cluster / "trajectories" / instance_id).iterdir()}
        assert {"trajectory.json", "patch.diff", "result.json"} <= names
    nodes = {r["node"] for r in ran.values()}
    assert nodes == workers(ray_cluster)  # both sandbox nodes, never the head
    assert all(r["node"] is None for r in results(threads).values())
    assert batch_containers(client, cluster) == []
    record = json.loads((cluster / "run.json").read_text())
    assert record["sessions"][0]["options"]["ray"]["address"] == ray_cluster.address

    on_threads = grade(threads / "predictions.jsonl", dataset, "--workers", "2")
    on_cluster = grade(cluster / "predictions.jsonl", dataset, "--ray", ray_cluster.address)
    assert on_cluster["counts"] == on_threads["counts"]
    assert on_cluster["counts"] == {"resolved": 1, "unresolved": 1, "error": 0, "empty_patch": 1}
    strip = ("duration_s",)
    assert {
        i: {k: v for k, v in r.items() if k not in strip}
        for i, r in on_cluster["instances"].items()
    } == {
        i: {k: v for k, v in r.items() if k not in strip}
        for i, r in on_threads["instances"].items()
    }
    log = (cluster / "eval/calc__calc-1/test_output.txt").read_text()
    assert "Ran 3 tests" in log


def running_on_a_worker(
    cluster: Cluster, client: docker.DockerClient, output: Path
) -> tuple[object, int, str] | None:
    """A worker node, the pid of its Ray worker (a child of its raylet) that holds a
    container of the run, and the instance that container works on."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in cluster.worker_nodes}
    label = f"cwm-agent.swebench={output.resolve().name}"
    for container in client.containers.list(filters={"label": label}):
        pid = container.labels.get("cwm-agent.pid", "")
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent in raylets:
            return raylets[parent], int(pid), container.labels["cwm-agent.instance"]
    return None


def frozen_mid_instance(
    cluster: Cluster, client: docker.DockerClient, output: Path, process: subprocess.Popen[str]
) -> tuple[object, str]:
    """A worker node whose Ray worker is stopped (SIGSTOP) while its instance's container
    still exists: that task has not returned (it returns once its container is gone),
    so the instance can only finish by being run again elsewhere."""
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None and time.monotonic() < deadline
        found = running_on_a_worker(cluster, client, output)
        if found is not None:
            node, pid, instance = found
            os.kill(pid, signal.SIGSTOP)
            label = f"cwm-agent.instance={instance}"
            if client.containers.list(filters={"label": [label, f"cwm-agent.pid={pid}"]}):
                return node, instance
            os.kill(pid, signal.SIGCONT)  # it finished just before: try the next one
        time.sleep(0.05)


def start_run(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cwm_agent.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,
    )


def no_containers_soon(client: docker.DockerClient, output: Path, wait_s: float = 30) -> bool:
    deadline = time.monotonic() + wait_s
    while batch_containers(client, output) and time.monotonic() < deadline:
        time.sleep(0.5)
    return batch_containers(client, output) == []


def test_a_lost_worker_node_loses_no_instance_and_repeats_none(
    ray_cluster: Cluster,
    dataset: Path,
    replays: Path,
    tmp_path: Path,
    client: docker.DockerClient,
) -> None:
    output = tmp_path / "lost"
    process = start_run(run_args(dataset, replays, output, "--ray", ray_cluster.address))
    try:
        victim, lost = frozen_mid_instance(ray_cluster, client, output, process)
        ray_cluster.remove_node(victim, allow_graceful=False)  # its raylet and workers killed
        out, err = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
        add_worker(ray_cluster)  # two sandbox nodes again for the other tests
    assert process.returncode == 1, err + out  # calc-4's missing image
    assert "3 instance(s) finished, 1 error(s)" in out
    lines = [p["instance_id"] for p in predictions(output)]
    assert sorted(lines) == IDS  # each exactly once
    ran = results(output)
    assert ran["calc__calc-4"]["error"] == "image_missing"
    assert all(r["status"] != "error" for i, r in ran.items() if i in IDS)
    # The instance lost with the node ran again on the surviving one, and says so. (What
    # finished there before the loss rightly names the lost node, however late the driver
    # wrote it: the node is read in the task, on the node that ran it.)
    assert ran[lost]["node"] in workers(ray_cluster) - {victim.node_id}
    # The lost node's containers stop with their owner's keep-alive.
    assert no_containers_soon(client, output)


def test_without_the_flag_ray_is_never_imported() -> None:
    code = (
        "import sys, cwm_agent.cli, cwm_agent.swebench.commands, cwm_agent.swebench.runner, "
        "cwm_agent.swebench.evaluate; print('ray' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_ray_flag_without_the_extra_is_one_line(
    dataset: Path, replays: Path, tmp_path: Path
) -> None:
    """Ray made unimportable the way Python spells it (a None entry in sys.modules)."""
    output = tmp_path / "no-ray"
    code = (
        "import sys; sys.modules['ray'] = None; from cwm_agent.cli import app; "
        "sys.argv = ['cwm-agent', *sys.argv[1:]]; app()"
    )
    args = run_args(dataset, replays, output, "--ray", "local")
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: --ray needs Ray: pip install 'cwm-agent[ray]'"
    ]
    assert not output.exists()


@pytest.fixture
def driver(ray_cluster: Cluster) -> Iterator[None]:
    """This test process as a driver of the cluster."""
    ray.init(address=ray_cluster.address, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def pid_of(actor: object) -> int:
    return ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))  # type: ignore[attr-defined]


def test_a_replica_killed_mid_reply_is_restarted_and_the_reply_still_comes(
    driver: None, tiny_cwm_dir: Path
) -> None:
    from cwm_agent.model import LoadConfig, ModelSpec, SamplingConfig, load_policy
    from cwm_agent.model.replicas import ReplicaPool, alive, start_replicas
    from cwm_agent.protocol.chat import Message

    spec = ModelSpec.parse(str(tiny_cwm_dir), LoadConfig(offline=True), SamplingConfig(greedy=True))
    conversation = [Message.user("hello")]
    expected = load_policy(spec).complete([conversation], 300)[0]
    assert expected.finish_reason == "length"  # a long reply: there is time to kill it

    handles = start_replicas(spec, count=1, gpus=0)
    try:
        pool = ReplicaPool(handles)
        replies: list[object] = []
        with pool.rollout("candidate-0") as policy:
            asking = threading.Thread(
                target=lambda: replies.extend(policy.complete([conversation], 300))
            )
            asking.start()
            deadline = time.monotonic() + 60
            while ray.get(handles[0].load.remote()) == 0:  # the reply is being decoded
                assert time.monotonic() < deadline
                time.sleep(0.01)
            before = pid_of(handles[0])
            ray.kill(handles[0], no_restart=False)
            asking.join(timeout=120)
            # A new process answered, and it learnt of the rollout from the retried call.
            assert pid_of(handles[0]) != before and ray.get(handles[0].load.remote()) == 1
        [reply] = replies
        assert reply.text == expected.text and reply.completion_tokens == 300
        assert alive(handles, timeout_s=30) == 1
    finally:
        for handle in handles:
            ray.kill(handle)


def test_a_local_model_runs_on_replicas(
    ray_cluster: Cluster,
    dataset: Path,
    tiny_cwm_dir: Path,
    tmp_path: Path,
    client: docker.DockerClient,
) -> None:
    output = tmp_path / "replicas"
    done = run_cli(
        "swebench", "run", "--dataset", str(dataset), "--model", str(tiny_cwm_dir), "--offline",
        "--greedy", "--output", str(output), "--instances", "calc__calc-1,calc__calc-3",
        "--max-turns", "2", "--max-reply-tokens", "24", "--quiet",
        "--ray", ray_cluster.address, "--replicas", "2", "--replica-gpus", "0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert "2 instance(s) finished, 0 error(s)" in done.stdout
    assert sorted(p["instance_id"] for p in predictions(output)) == IDS[::2]
    ran = results(output)
    assert all(r["turns"] >= 1 and r["tokens_used"] > 0 for r in ran.values())
    assert batch_containers(client, output) == []


def test_replicas_without_ray_or_gpus_are_one_line(
    ray_cluster: Cluster, dataset: Path, tiny_cwm_dir: Path, tmp_path: Path
) -> None:
    base = ["swebench", "run", "--dataset", str(dataset), "--model", str(tiny_cwm_dir), "--quiet"]
    done = run_cli(*base, "--output", str(tmp_path / "a"), "--replicas", "2")
    assert (
        done.returncode == 1 and done.stderr == "error: --replicas and --replica-gpus need --ray\n"
    )
    done = run_cli(*base, "--output", str(tmp_path / "b"), "--ray", ray_cluster.address)
    assert done.returncode == 1
    assert done.stderr.startswith("error: --replicas 1 of 1 GPU(s) each need 1 GPU(s); the Ray ")
    assert len(done.stderr.splitlines()) == 1


def test_a_driver_killed_mid_run_resumes_on_the_cluster(
    ray_cluster: Cluster,
    dataset: Path,
    replays: Path,
    tmp_path: Path,
    client: docker.DockerClient,
) -> None:
    output = tmp_path / "killed"
    args = run_args(dataset, replays, output, "--ray", ray_cluster.address)
    process = start_run(args)
    deadline = time.monotonic() + 120
    while not (output / "predictions.jsonl").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    before = predictions(output)
    assert 1 <= len(before) < 3

    again = run_cli(*args, "--resume")
    assert again.returncode == 1, again.stderr + again.stdout  # calc-4's missing image
    after = predictions(output)
    assert after[: len(before)] == before
    assert sorted(p["instance_id"] for p in after) == IDS
    # Ray ends the dead driver's tasks, and their containers go with them.
    assert no_containers_soon(client, output)


def test_a_wrong_token_is_one_line(
    ray_cluster: Cluster, dataset: Path, replays: Path, tmp_path: Path
) -> None:
    output = tmp_path / "refused"
    args = run_args(dataset, replays, output, "--ray", ray_cluster.address)
    done = run_cli(*args, env={"RAY_AUTH_TOKEN": "not-the-token-" + "1" * 32})
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: --ray {ray_cluster.address}: the cluster refused this driver's token: set "
        "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the token its "
        "nodes use"
    ]
    assert not output.exists()


def test_ray_local_runs_and_grades_on_one_machine(
    dataset: Path, replays: Path, tmp_path: Path, client: docker.DockerClient
) -> None:
    output = tmp_path / "local"
    local = ("--ray", "local", "--instances", "calc__calc-1")
    done = run_cli(*run_args(dataset, replays, output, *local))
    assert done.returncode == 0, done.stderr + done.stdout
    [result] = results(output).values()
    assert result["status"] == "submitted" and result["node"]
    report = grade(output / "predictions.jsonl", dataset, "--ray", "local")
    assert report["counts"]["resolved"] == 1
    assert batch_containers(client, output) == []


def test_ray_grades_with_the_local_backend_only(tmp_path: Path) -> None:
    predicted = tmp_path / "predictions.jsonl"
    predicted.write_text("")
    done = run_cli(
        "swebench", "eval", "--predictions", str(predicted), "--dataset", str(tmp_path / "d.jsonl"),
        "--backend", "official", "--ray", "local",
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == "error: --ray grades with --backend local only\n"
    assert not (tmp_path / "report.json").exists()


@pytest.fixture
def ray_tmpdir() -> Iterator[Path]:
    """RAY_TMPDIR for a local cluster of the test's own; short, for Ray's socket paths."""
    root = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def session_processes(root: Path) -> list[str]:
    """Ray's processes of the local cluster whose temp root is `root`: those that
    inherit RAY_TMPDIR, and their descendants (the raylet's agents are started
    with an environment of their own); command lines are retitled `ray::...`."""
    mark = f"RAY_TMPDIR={root}".encode()
    parent, title, marked = {}, {}, set()
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            environ = (proc / "environ").read_bytes()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        parent[proc.name] = stat.rsplit(")", 1)[1].split()[1]
        title[proc.name] = cmdline.decode(errors="replace")
        if mark in environ.split(b"\0"):
            marked.add(proc.name)

    def in_session(pid: str) -> bool:
        seen: set[str] = set()
        while pid in parent and pid not in seen:
            if pid in marked:
                return True
            seen.add(pid)
            pid = parent[pid]
        return False

    return [
        f"{pid} {text[:80]}"
        for pid, text in title.items()
        if "ray" in text and "cwm_agent" not in text and in_session(pid)
    ]


@pytest.mark.parametrize(
    ("moment", "signals"),
    [("ray.init", 1), ("ray.init", 2), ("agents", 1), ("mid-run", 1), ("mid-run", 2)],
)
def test_an_interrupt_of_ray_local_is_one_line_and_leaves_no_ray_process(
    dataset: Path,
    tmp_path: Path,
    ray_tmpdir: Path,
    client: docker.DockerClient,
    moment: str,
    signals: int,
) -> None:
    """Ctrl-C as the local cluster starts, once its raylet's agents run, or with
    instances under way; once, or twice 0.3 s apart like an impatient user."""
    folder = tmp_path / "replays"
    folder.mkdir()
    for n in (1, 2, 3):
        (folder / f"calc__calc-{n}.json").write_text(json.dumps([helpers.call("bash", "sleep 60")]))
    root = ray_tmpdir
    output = tmp_path / f"local-{moment}-{signals}"
    args = run_args(dataset, folder, output, "--ray", "local", "--instances", ",".join(IDS))
    process = start_cli(*args, env={"RAY_TMPDIR": str(root)})
    try:
        deadline = time.monotonic() + 180
        label = f"cwm-agent.swebench={output.name}"
        started = {
            "ray.init": lambda: any(root.glob("ray/session_*")),
            "agents": lambda: any("Agent" in p for p in session_processes(root)),
            "mid-run": lambda: client.api.containers(filters={"label": label}),
        }[moment]
        while not started():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        if signals == 2:
            time.sleep(0.3)  # the second Ctrl-C of an impatient user
            process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err + out
    assert len(err.splitlines()) == 1 and err.startswith("interrupted: "), err
    deadline = time.monotonic() + 10
    while session_processes(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(root) == []
    assert no_containers_soon(client, output)
