"""One in-process model shared by many rollout threads, their requests batched.

Each rollout runs in its own thread and asks for one reply at a time. A local
model answers one call at a time, and a call with k conversations costs about
as much as a call with one (decoding is bound by reading the weights), so
requests are gathered: a batch leaves when every open rollout is waiting, or
when the oldest request has waited `window_s` (the others are running tools).
The thread whose request completes a batch runs it; nothing runs in the
background.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cwm_agent.model.policy import Completion, Policy, TokenLimit, per_conversation
from cwm_agent.protocol.chat import ChatTokenizer, Message


@dataclass
class _Request:
    conversation: Sequence[Message]
    limit: int
    arrived: float = field(default_factory=time.monotonic)
    done: bool = False
    completion: Completion | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """How well requests were gathered: calls to the model and their sizes."""

    calls: int = 0
    requests: int = 0
    largest: int = 0


class BatchingPolicy:
    """Hands out a `Policy` per rollout (`rollout()`); their requests share model calls."""

    def __init__(self, policy: Policy, window_s: float = 0.1) -> None:
        self.policy = policy
        self.window_s = window_s
        self.stats = BatchStats()
        self._ready = threading.Condition()
        self._pending: list[_Request] = []
        self._open = 0
        self._busy = False

    def rollout(self) -> RolloutPolicy:
        """A policy for one rollout; `close()` it when the rollout ends, so that
        the others stop waiting for it."""
        with self._ready:
            self._open += 1
        return RolloutPolicy(self)

    def _close(self) -> None:
        with self._ready:
            self._open -= 1
            self._ready.notify_all()

    def _ask(self, requests: list[_Request]) -> list[Completion]:
        with self._ready:
            self._pending.extend(requests)
            self._ready.notify_all()
            while not all(request.done for request in requests):
                wait = self._wait_before_dispatch()
                if wait is None:
                    self._dispatch()
                else:
                    self._ready.wait(wait)
        for request in requests:
            if request.error is not None:
                raise request.error
        return [request.completion for request in requests if request.completion is not None]

    def _wait_before_dispatch(self) -> float | None:
        """None when a batch should leave now, else how long to wait (lock held)."""
        if self._busy or not self._pending:
            return self.window_s
        if len(self._pending) >= self._open:
            return None
        waited = time.monotonic() - min(request.arrived for request in self._pending)
        return None if waited >= self.window_s else self.window_s - waited

    def _dispatch(self) -> None:
        """Run every pending request as one call, the lock released meanwhile."""
        batch, self._pending = self._pending, []
        self._busy = True
        self._ready.release()
        try:
            completions = self.policy.complete(
                [request.conversation for request in batch],
                [request.limit for request in batch],
            )
            for request, completion in zip(batch, completions, strict=True):
                request.completion = completion
        except BaseException as exc:  # every waiting rollout learns of the failure
            for request in batch:
                request.error = exc
        finally:
            self._ready.acquire()
            self._busy = False
            for request in batch:
                request.done = True
            self.stats.calls += 1
            self.stats.requests += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            self._ready.notify_all()


class RolloutPolicy:
    """One rollout's view of a `BatchingPolicy`: a `Policy` like any other."""

    def __init__(self, shared: BatchingPolicy) -> None:
        self._shared = shared
        self._closed = False

    @property
    def name(self) -> str:
        return self._shared.policy.name

    @property
    def tokenizer(self) -> ChatTokenizer | None:
        return self._shared.policy.tokenizer

    def complete(
        self, conversations: Sequence[Sequence[Message]], max_new_tokens: TokenLimit
    ) -> list[Completion]:
        limits = per_conversation(max_new_tokens, len(conversations))
        requests = [_Request(c, limit) for c, limit in zip(conversations, limits, strict=True)]
        return self._shared._ask(requests)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._shared._close()
