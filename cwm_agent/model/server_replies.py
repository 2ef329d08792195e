"""What `cwm-agent serve` answers: OpenAI-shaped bodies, whole or as the SSE chunks of a
stream (`data: {...}` events ending with `data: [DONE]`, as the openai SDK reads them).

Both endpoints share one shape per choice; they differ only in where the text goes
(`text`, or a chat `message` / `delta`) and in their object names.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cwm_agent.model.server_requests import Endpoint, Request
from cwm_agent.protocol.chat import ASSISTANT

Event = dict[str, Any]
_OBJECTS = {"completions": "text_completion", "chat": "chat.completion"}
_CHUNK_OBJECTS = {"completions": "text_completion", "chat": "chat.completion.chunk"}
_ID_PREFIXES = {"completions": "cmpl", "chat": "chatcmpl"}


@dataclass(frozen=True)
class Choice:
    """One generated continuation, as the reply names it."""

    text: str
    finish_reason: str
    stop_reason: int | str | None  # as vLLM: a requested stop id by its id, a stop token by name
    completion_tokens: int  # the stop token counts
    token_ids: list[int] | None  # only when the request asked for return_token_ids


@dataclass
class Reply:
    """The id, time and model every body and chunk of one reply carries."""

    endpoint: Endpoint
    model: str
    id: str = field(init=False)
    created: int = field(init=False, default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = f"{_ID_PREFIXES[self.endpoint]}-{uuid.uuid4().hex}"

    def body(self, choices: list[Choice], prompt_tokens: int) -> Event:
        """The whole reply of a request that did not stream."""
        return {
            **self._head(_OBJECTS[self.endpoint]),
            "choices": [self._choice(i, c.text, c, whole=True) for i, c in enumerate(choices)],
            "usage": usage(prompt_tokens, choices),
        }

    def chunk(self, index: int, text: str, end: Choice | None = None, role: bool = False) -> Event:
        """One event of a stream: new text of choice `index`, with its end when `end` is given."""
        choice = self._choice(index, text, end, whole=False)
        if role:
            choice["delta"]["role"] = ASSISTANT
        return {**self._head(_CHUNK_OBJECTS[self.endpoint]), "choices": [choice]}

    def usage_chunk(self, choices: list[Choice], prompt_tokens: int) -> Event:
        """The last event of a stream asked for with `stream_options.include_usage`."""
        return {
            **self._head(_CHUNK_OBJECTS[self.endpoint]),
            "choices": [],
            "usage": usage(prompt_tokens, choices),
        }

    def _head(self, kind: str) -> Event:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _choice(self, index: int, text: str, end: Choice | None, whole: bool) -> Event:
        if self.endpoint == "completions":
            content: Event = {"text": text}
        elif whole:
            content = {"message": {"role": ASSISTANT, "content": text}}
        else:
            content = {"delta": {"content": text}}
        choice = {
            "index": index,
            **content,
            "logprobs": None,
            "finish_reason": None if end is None else end.finish_reason,
            "stop_reason": None if end is None else end.stop_reason,
        }
        if end is not None and end.token_ids is not None:
            choice["token_ids"] = end.token_ids
        return choice


def usage(prompt_tokens: int, choices: list[Choice]) -> Event:
    """The prompt is counted once however many choices were generated from it, as OpenAI does."""
    completion_tokens = sum(choice.completion_tokens for choice in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class TextDeltas:
    """A choice's text as its tokens arrive: a token's text is given once every character
    of it is whole (a character split over two tokens waits for the second)."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._start = 0  # ids before this are given; the window decodes from here
        self._given = 0  # ids up to here are given
        self.text = ""

    def add(self, token: int) -> str:
        """The new text once `token` is added ("" while a character is incomplete)."""
        self._ids.append(token)
        before = self._decode(self._ids[self._start : self._given])
        now = self._decode(self._ids[self._start :])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        self._start, self._given = self._given, len(self._ids)
        delta = now[len(before) :]
        self.text += delta
        return delta


class Stream:
    """One streamed reply: the roles first (chat), new text of each choice as it is
    generated, then each choice's end and, when asked, the usage."""

    def __init__(
        self,
        request: Request,
        reply: Reply,
        decode: Callable[[list[int]], str],
        stops: set[int],
        send: Callable[[Event], None],
    ) -> None:
        self._request = request
        self._reply = reply
        self._stops = stops
        self._send = send
        self._texts = [TextDeltas(decode) for _ in range(request.n)]

    def start(self) -> None:
        if self._request.endpoint == "chat":
            for index in range(self._request.n):
                self._send(self._reply.chunk(index, "", role=True))

    def token(self, index: int, token: int) -> None:
        """Called by generation with each new token of choice `index`."""
        if token not in self._stops:
            delta = self._texts[index].add(token)
            if delta:
                self._send(self._reply.chunk(index, delta))

    def finish(self, choices: list[Choice], prompt_tokens: int) -> None:
        for index, choice in enumerate(choices):
            rest = choice.text[len(self._texts[index].text) :]
            self._send(self._reply.chunk(index, rest, end=choice))
        if self._request.include_usage:
            self._send(self._reply.usage_chunk(choices, prompt_tokens))
