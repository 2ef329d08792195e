"""`openai:URL,URL,...`: several servers of one model, e.g. one vLLM per GPU node.

Each reply goes to the endpoint with the fewest requests this process has
outstanding there; an endpoint that fails it (after one quick retry of its own)
hands it to the next, so a dead server slows a run down instead of failing it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cwm_agent.model.openai_api import OpenAIPolicy
from cwm_agent.model.policy import Completion, PolicyError, TokenLimit, per_conversation
from cwm_agent.protocol.chat import ChatTokenizer, Message

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
        if len(conversations) <= 1:
            return [self._one(c, limit) for c, limit in zip(conversations, limits, strict=True)]
        with ThreadPoolExecutor(max_workers=len(conversations)) as pool:
            return list(pool.map(self._one, conversations, limits))

    def _one(self, conversation: Sequence[Message], limit: int) -> Completion:
        """One reply, from the least busy endpoint that has not failed it yet."""
        tried: set[int] = set()
        while True:
            with self._lock:
                index = min(
                    (i for i in range(len(self.endpoints)) if i not in tried),
                    key=self.outstanding.__getitem__,
                )
                self.outstanding[index] += 1
            try:
                return self.endpoints[index].complete([conversation], limit)[0]
            except PolicyError as exc:
                tried.add(index)
                if len(tried) == len(self.endpoints):
                    raise PolicyError(
                        f"all {len(tried)} endpoints failed; the last: {exc}"
                    ) from None
            finally:
                with self._lock:
                    self.outstanding[index] -= 1
