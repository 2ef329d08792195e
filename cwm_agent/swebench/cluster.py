"""`--ray`: instances as Ray tasks on the nodes of a cluster that run sandboxes.

A node declares how many containers its Docker daemon may run at once with the
custom resource `docker_slots` (`ray start --resources='{"docker_slots": 8}'`);
each instance task asks for as many slots as it holds containers at once, so
Ray never overfills a node. A task works in a scratch folder on its node and
ships the instance's files back with its outcome: the driver alone writes the
run folder, so predictions.jsonl stays exactly-once and `--resume` works as
without Ray. A task whose node or worker dies is retried elsewhere by Ray (up
to MAX_RETRIES times); one lost more often comes back as an error, retried by
`--resume`. Ray is imported only here, and only once `--ray` is given.

This is the executor seam of `--ray`, as `parallel` is of threads: `runner` and
`evaluate` hand it their work, and it imports neither of them.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, Field

from cwm_agent.atomic_write import write_atomically
from cwm_agent.errors import first_line
from cwm_agent.sandbox import SandboxInterrupted, teardown
from cwm_agent.swebench.errors import SwebenchError
from cwm_agent.tts import TTSOptions

if TYPE_CHECKING:
    from cwm_agent.model import ModelSpec

SLOTS = "docker_slots"
MAX_RETRIES = 3  # attempts after the first, for a task whose node or worker died
NAMESPACE = "cwm-agent"  # this project's jobs, apart from others on a shared cluster

T = TypeVar("T")
R = TypeVar("R")
_replicas: list[Any] = []  # this run's model replicas, for the progress line
_STOP_WAIT_S = 10.0  # for the local cluster's processes to go once killed


class ClusterOptions(BaseModel):
    """`--ray` and how a local `--model` is served on the cluster."""

    address: str = Field(description="local, auto or HOST:PORT")
    replicas: int = Field(1, ge=1, description="copies of a local --model, one Ray actor each")
    replica_gpus: float = Field(1.0, ge=0, description="GPUs each replica holds")


@dataclass(frozen=True)
class Shipped(Generic[R]):
    """What a task brings back: its value, the node it ran on, the files it wrote."""

    value: R
    node: str
    files: dict[str, bytes]


def connect(address: str, local_slots: int) -> None:
    """Join the cluster `--ray` names: `local` starts one here offering `local_slots`,
    `auto` finds RAY_ADDRESS or the cluster `ray start` joined, else HOST:PORT."""
    try:
        import ray
    except ImportError:
        raise SwebenchError("--ray needs Ray: pip install 'cwm-agent[ray]'") from None
    if ray.is_initialized():
        return
    quiet: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address == "local":  # token authentication as Ray sets it up for local clusters
        settings = {"resources": {SLOTS: local_slots}, "include_dashboard": False, **quiet}
        atexit.register(_stop_local_cluster)  # also one whose start was interrupted
    else:
        settings = quiet
    deferred = _sigint_deferred() if address == "local" else contextlib.nullcontext()
    try:
        with deferred, _stderr_silenced():  # a refused driver's C++ client logs retries there
            ray.init(address=address, namespace=NAMESPACE, **settings)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        if _refused_token(exc):
            raise SwebenchError(
                f"--ray {address}: the cluster refused this driver's token: set RAY_AUTH_MODE="
                "token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the token its nodes use"
            ) from None
        raise SwebenchError(
            f"--ray {address}: no Ray cluster to join ({first_line(exc)}): start one with "
            "`ray start --head`, give its HOST:PORT, or use --ray local"
        ) from None


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Ctrl-C held back while a local cluster starts: one that lands early in `ray.init`
    is otherwise lost, and the run goes on. Held (blocked), it takes effect as the
    start ends, and the cluster is stopped at exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _stop_local_cluster() -> None:
    """At exit: end every process of the cluster `--ray local` started, at once. Ray's
    own shutdown leaves the raylet's agents (ray::DashboardAgent, ray::RuntimeEnvAgent)
    to notice their raylet is gone a minute later, and a second Ctrl-C cuts it short;
    so Ctrl-C is ignored from here on, and whatever descends from this process and
    survives the shutdown is killed (found while the tree is whole, and again after)."""
    import ray

    with contextlib.suppress(ValueError):  # outside the main thread: nothing to ignore
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    started = _ray_descendants()
    with contextlib.suppress(Exception):
        ray.shutdown()
    left = {(pid, began) for pid, began in started | _ray_descendants() if _began(pid) == began}
    for pid, _ in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + _STOP_WAIT_S
    while any(_began(pid) == began for pid, began in left) and time.monotonic() < deadline:
        time.sleep(0.05)


def _ray_descendants() -> set[tuple[int, str]]:
    """Processes under this one whose command line names Ray (its retitled ones too),
    with when each began (a pid is reused once its process is gone)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found: set[tuple[int, str]] = set()
    todo = [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            with contextlib.suppress(OSError):
                if b"ray" in (Path("/proc") / str(child) / "cmdline").read_bytes():
                    found.add((child, _began(child)))
            todo.append(child)
    return found


def _began(pid: int) -> str:
    """When the process `pid` began, "" once it is gone or a zombie (a killed child of
    ours stays one until we exit)."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] == "Z" else fields[19]


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _refused_token(exc: BaseException | None) -> bool:
    """Ray reports a wrong or missing token as a failure to connect, caused by it."""
    while exc is not None:
        if "AuthenticationError" in str(exc) or type(exc).__name__ == "AuthenticationError":
            return True
        exc = exc.__cause__
    return False


def slots_for(scaling: TTSOptions) -> int:
    """Containers one instance holds at once: one rollout, or up to --jobs of its rollouts."""
    if not scaling.enabled:
        return 1
    return min(scaling.jobs, scaling.samples + scaling.test_samples)


def nodes_alive() -> str:
    """For the progress line: the sandbox nodes alive, and the model replicas when any."""
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get(SLOTS, 0) > 0]
    if not _replicas:
        return f"{len(nodes)} node(s)"
    from cwm_agent.model.replicas import alive

    return f"{len(nodes)} node(s) · {alive(_replicas)}/{len(_replicas)} replica(s)"


def run_on_cluster(
    items: list[T],
    work: Callable[[T, Path], R],
    output: Path,
    slots: int,
    on_result: Callable[[T, Shipped[R]], None],
    lost: Callable[[T, str], R],
) -> None:
    """`work(item, scratch)` as one task per item on a node with `slots` free docker
    slots; its files under `scratch` land at the same places under `output`, then
    `on_result` is called in this thread. An item whose task raised or was lost too
    often gets `lost(item, reason)`. An interrupt cancels the tasks (their containers
    go with them)."""
    import ray

    _require_slots(slots)
    teardown.install_signal_handlers()
    remote = ray.remote(_on_node).options(
        num_cpus=0, resources={SLOTS: slots}, max_retries=MAX_RETRIES
    )
    refs = {remote.remote(work, item): item for item in items}
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in ready:
                item = refs[ref]
                try:
                    shipped: Shipped[R] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # raised by the task itself
                    reason = f"{type(exc.cause).__name__}: {first_line(exc.cause)}"
                    shipped = Shipped(lost(item, reason), "", {})
                except ray.exceptions.RayError as exc:  # its node or worker died, too often
                    reason = f"lost {MAX_RETRIES + 1} times: {type(exc).__name__}"
                    shipped = Shipped(lost(item, f"{reason}: {first_line(exc)}"), "", {})
                for name, data in shipped.files.items():
                    path = output / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_atomically(path, data)
                on_result(item, shipped)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)  # the worker dies, and its containers' keep-alive
        raise


def _require_slots(slots: int) -> None:
    import ray

    offered = [n["Resources"].get(SLOTS, 0) for n in ray.nodes() if n["Alive"]]
    if max(offered, default=0) < slots:
        raise SwebenchError(
            f"no node of the Ray cluster offers {slots} {SLOTS} (the most is "
            f"{max(offered, default=0):g}): start sandbox nodes with "
            f"`ray start --resources='{{\"{SLOTS}\": N}}'`, or lower --jobs"
        )


def _on_node(work: Callable[[T, Path], R], item: T) -> Shipped[R]:
    """The task's body: `work` in a scratch folder, whose files are shipped back."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    try:
        with tempfile.TemporaryDirectory(prefix="cwm-agent-") as scratch:
            root = Path(scratch)
            value = work(item, root)
            files = {
                str(path.relative_to(root)): path.read_bytes()
                for path in sorted(root.rglob("*"))
                if path.is_file()
            }
    except SandboxInterrupted:
        # SIGTERM or SIGHUP on a worker: its node is going away, not the run. Its
        # containers are gone; dying as a lost worker lets Ray run the task again
        # elsewhere, where returning the interrupt would record an error.
        os._exit(1)
    return Shipped(value, node, files)


@contextmanager
def model_replicas(model: ModelSpec, options: ClusterOptions) -> Iterator[list[Any]]:
    """A local `--model` as `options.replicas` Ray actors (none for other models),
    shown on the progress line while they live and killed at the end."""
    import ray

    if model.kind == "local":
        from cwm_agent.model.replicas import start_replicas

        _replicas[:] = start_replicas(model, options.replicas, options.replica_gpus)
    try:
        yield list(_replicas)
    finally:
        for handle in _replicas:
            ray.kill(handle)
        _replicas.clear()
