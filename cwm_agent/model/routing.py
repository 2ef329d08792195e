"""`openai:URL,URL,...`: several servers of one model, e.g. one vLLM per GPU node.

Each reply goes to the endpoint with the fewest requests this process has
outstanding there; an endpoint that fails it (after one quick retry of its own)
hands it to the next, so a dead server slows a run down instead of failing it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from cwm_agent.model.openai_api import OpenAIPolicy
from cwm_agent.model.policy import Completion, PolicyError, TokenLimit, per_conversation
from cwm_agent.protocol.chat import ChatTokenizer, Message

T = TypeVar("T")
RETRIES_PER_ENDPOINT = 1  # then the next endpoint; the last one standing retries as usual


class EndpointRouter:
    """A `Policy` over several OpenAI-compatible servers: least outstanding requests first."""

    tokenizer: ChatTokenizer | None = None

    def __init__(self, urls: Sequence[str], **settings: Any) -> None:
        if len(urls) < 2 or not all(url.strip() for url in urls):
            raise PolicyError(
                f"--model openai:{','.join(urls)}: expected URL,URL,... with no empty entry"
            )
        self.endpoints = [
            OpenAIPolicy(url, **{**settings, "retries": RETRIES_PER_ENDPOINT}) for url in urls
        ]
        self.outstanding = [0] * len(self.endpoints)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "openai:" + ",".join(endpoint.url for endpoint in self.endpoints)

    def complete(
        self, conversations: Sequence[Sequence[Message]], max_new_tokens: TokenLimit
    ) -> list[Completion]:
        limits = per_conversation(max_new_tokens, len(conversations))
        asks = [
            functools.partial(_complete, conversation, limit)
            for conversation, limit in zip(conversations, limits, strict=True)
        ]
        return self._spread(asks)

    def complete_ids(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int]
    ) -> list[list[int]]:
        """`OpenAIPolicy.complete_ids`, each prompt routed on its own."""
        asks = [functools.partial(_complete_ids, p, max_new_tokens, stop_ids) for p in prompts]
        return self._spread(asks)

    def _spread(self, asks: list[Callable[[OpenAIPolicy], T]]) -> list[T]:
        if len(asks) <= 1:
            return [self._route(ask) for ask in asks]
        with ThreadPoolExecutor(max_workers=len(asks)) as pool:
            return list(pool.map(self._route, asks))

    def _route(self, ask: Callable[[OpenAIPolicy], T]) -> T:
        """One request, to the least busy endpoint that has not failed it yet."""
        tried: set[int] = set()
        while True:
            with self._lock:
                index = min(
                    (i for i in range(len(self.endpoints)) if i not in tried),
                    key=self.outstanding.__getitem__,
                )
                self.outstanding[index] += 1
            try:
                return ask(self.endpoints[index])
            except PolicyError as exc:
                tried.add(index)
                if len(tried) == len(self.endpoints):
                    raise PolicyError(
                        f"all {len(tried)} endpoints failed; the last: {exc}"
                    ) from None
            finally:
                with self._lock:
                    self.outstanding[index] -= 1


def _complete(conversation: Sequence[Message], limit: int, endpoint: OpenAIPolicy) -> Completion:
    return endpoint.complete([conversation], limit)[0]


def _complete_ids(
    prompt: Sequence[int], limit: int, stop_ids: Sequence[int], endpoint: OpenAIPolicy
) -> list[int]:
    return endpoint.complete_ids([prompt], limit, stop_ids)[0]
