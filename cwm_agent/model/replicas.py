"""`--replicas N` with `--ray`: N loaded copies of a local model, each a Ray actor.

A replica holds the model behind the batching policy, so the concurrent
rollouts routed to it are still decoded as one batch. An instance picks the
replica with the fewest open rollouts and keeps all its rollouts there (their
shared prompt prefix is there). Ray restarts a replica that dies and retries
the calls that were waiting on it; a rollout the new copy has not seen starts
from its conversation, which is all a call carries.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cwm_agent.errors import first_line
from cwm_agent.model import ModelSpec, PolicyPool, load_policy
from cwm_agent.model.policy import Completion, Policy, PolicyError, TokenLimit
from cwm_agent.model.request_batching import BatchingPolicy, RolloutPolicy
from cwm_agent.protocol.chat import ChatTokenizer, Message

MAX_RESTARTS = 3  # of a replica, and retries of each call that was waiting on it


class Replica:
    """The actor: one model, its rollouts by key; methods run on many threads."""

    def __init__(self, spec: ModelSpec) -> None:
        self.shared = BatchingPolicy(load_policy(spec))
        self.rollouts: dict[str, RolloutPolicy] = {}
        self.lock = threading.Lock()

    def describe(self) -> tuple[str, ChatTokenizer | None]:
        return self.shared.policy.name, self.shared.policy.tokenizer

    def load(self) -> int:
        """Open rollouts here."""
        return len(self.rollouts)

    def complete(
        self, key: str, conversations: Sequence[Sequence[Message]], max_new_tokens: TokenLimit
    ) -> list[Completion]:
        with self.lock:
            if key not in self.rollouts:
                self.rollouts[key] = self.shared.rollout()
            policy = self.rollouts[key]
        return policy.complete(conversations, max_new_tokens)

    def close(self, key: str) -> None:
        with self.lock:
            policy = self.rollouts.pop(key, None)
        if policy is not None:
            policy.close()


def start_replicas(spec: ModelSpec, count: int, gpus: float) -> list[Any]:
    """The actors, each with its model loaded; a model that does not load fails here."""
    import ray

    offered = ray.cluster_resources().get("GPU", 0)
    if count * gpus > offered:
        raise PolicyError(
            f"--replicas {count} of {gpus:g} GPU(s) each need {count * gpus:g} GPU(s); the Ray "
            f"cluster has {offered:g}: lower --replicas, or --replica-gpus 0 for the CPU"
        )
    actor = ray.remote(Replica).options(
        num_cpus=0,
        num_gpus=gpus,
        max_restarts=MAX_RESTARTS,
        max_task_retries=MAX_RESTARTS,
        max_concurrency=1024,  # one thread per waiting rollout, so their requests batch
    )
    handles = [actor.remote(spec) for _ in range(count)]
    try:
        ray.get([handle.load.remote() for handle in handles])
    except ray.exceptions.RayError as exc:
        for handle in handles:
            ray.kill(handle, no_restart=True)
        cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
        raise PolicyError(f"--replicas: {spec} did not load: {first_line(cause)}") from None
    return handles


def alive(handles: Sequence[Any], timeout_s: float = 0.5) -> int:
    """How many replicas answer now (a restarting one does not)."""
    import ray

    ready, _ = ray.wait(
        [h.load.remote() for h in handles], num_returns=len(handles), timeout=timeout_s
    )
    return len(ready)


class ReplicaPool(PolicyPool):
    """An instance's rollouts, all on the least loaded replica."""

    def __init__(self, handles: Sequence[Any]) -> None:
        import ray

        loads = ray.get([handle.load.remote() for handle in handles])
        self.handle = handles[min(range(len(handles)), key=loads.__getitem__)]
        self.name, self.tokenizer = ray.get(self.handle.describe.remote())

    @contextmanager
    def rollout(self, name: str) -> Iterator[Policy]:
        key = f"{name}-{uuid.uuid4().hex}"
        try:
            yield ReplicaPolicy(self.handle, key, self.name, self.tokenizer)
        finally:
            self.handle.close.remote(key)


@dataclass(frozen=True)
class ReplicaPolicy:
    """One rollout's `Policy`, answered by its replica."""

    handle: Any
    key: str
    name: str
    tokenizer: ChatTokenizer | None

    def complete(
        self, conversations: Sequence[Sequence[Message]], max_new_tokens: TokenLimit
    ) -> list[Completion]:
        import ray

        call = self.handle.complete.remote(self.key, list(conversations), max_new_tokens)
        try:
            return ray.get(call)
        except ray.exceptions.RayTaskError as exc:  # the model's own failure
            raise PolicyError(f"model: {first_line(exc.cause)}") from None
        except ray.exceptions.RayError as exc:  # the replica lost more often than it restarts
            raise PolicyError(f"model: replica lost: {first_line(exc)}") from None
