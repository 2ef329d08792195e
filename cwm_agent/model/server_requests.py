"""What `cwm-agent serve` accepts: request bodies checked before the model is touched.

Every refusal here is a `RequestError` with one line naming the field, so a client
gets a 400 it can act on, never a 500 or a hang. Chat messages become CWM's own
`Message`s, rendered later by `cwm_agent.protocol` (no second chat template).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from cwm_agent.model.spec import SamplingConfig
from cwm_agent.protocol.chat import ASSISTANT, STOP_TOKENS, SYSTEM, USER, Message

Endpoint = Literal["completions", "chat"]
MAX_CHOICES = 16  # n: each choice is one row of the batch, with its own KV cache
_SEEDS = (-(2**63), 2**64 - 1)  # what torch.manual_seed takes
_UNSUPPORTED = ("echo", "logprobs", "top_logprobs", "suffix", "logit_bias", "tools", "functions")


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body."""

    def __init__(self, status: HTTPStatus, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


def bad(message: str, param: str | None = None) -> RequestError:
    return RequestError(HTTPStatus.BAD_REQUEST, message, param)


@dataclass(frozen=True)
class Limits:
    """What the served model can take, known before any request is read."""

    context_size: int  # tokens
    vocab_size: int  # valid token ids are 0 .. vocab_size - 1
    longest_token_bytes: int  # no token of the vocabulary spells more bytes

    @property
    def prompt_bytes(self) -> int:
        """A text of more bytes cannot fit the context: it needs more tokens than it holds."""
        return self.context_size * self.longest_token_bytes


@dataclass(frozen=True)
class Request:
    """A checked request: what tokenizing, generation and the reply need."""

    endpoint: Endpoint
    prompt: str | list[int] | list[Message]
    extra_stops: list[int]
    max_tokens: int | None  # None: the rest of the context (chat's default, as vLLM)
    sampling: SamplingConfig
    n: int
    stream: bool
    include_usage: bool
    return_token_ids: bool


def check(endpoint: Endpoint, body: dict[str, Any], model_name: str, limits: Limits) -> Request:
    """The request `body` asks for, or the first thing wrong with it, in a fixed order."""
    model = body.get("model")
    if model is not None and model != model_name:
        raise RequestError(HTTPStatus.NOT_FOUND, f"the model {model!r} does not exist", "model")
    prompt = _prompt(body, limits) if endpoint == "completions" else _messages(body, limits)
    extra_stops = body.get("stop_token_ids") or []
    if not isinstance(extra_stops, list) or not all(type(i) is int for i in extra_stops):
        raise bad("stop_token_ids must be token ids", "stop_token_ids")
    check_ids(extra_stops, limits, "stop_token_ids")
    # Newer chat clients name it max_completion_tokens.
    limit = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    max_tokens = _number(body, limit, 16 if endpoint == "completions" else None, int, minimum=1)
    temperature = _number(body, "temperature", 1.0, float, minimum=0)
    top_p = _number(body, "top_p", 1.0, float)
    if not 0 < top_p <= 1:
        raise bad("top_p must be in (0, 1]", "top_p")
    seed = _number(body, "seed", None, int)
    if seed is not None and not _SEEDS[0] <= seed <= _SEEDS[1]:
        raise bad(f"seed must be an integer from {_SEEDS[0]} to {_SEEDS[1]}", "seed")
    n = _number(body, "n", 1, int, minimum=1)
    if n > MAX_CHOICES:
        raise bad(f"n must be at most {MAX_CHOICES}", "n")
    _refuse_unsupported(body)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options must be an object", "stream_options")
    return Request(
        endpoint=endpoint,
        prompt=prompt,
        extra_stops=extra_stops,
        max_tokens=max_tokens,
        sampling=SamplingConfig(temperature=temperature, top_p=top_p, seed=seed),  # 0: greedy
        n=n,
        stream=bool(body.get("stream")),
        include_usage=bool(options.get("include_usage")),
        return_token_ids=bool(body.get("return_token_ids")),
    )


def check_ids(ids: list[int], limits: Limits, field: str) -> None:
    """Token ids the model has: others would index past its embeddings."""
    if any(not 0 <= i < limits.vocab_size for i in ids):
        raise bad(f"{field} must be token ids from 0 to {limits.vocab_size - 1}", field)


def check_text_size(size: int, limits: Limits, field: str) -> None:
    """Refuses, before tokenizing it, text too long for the context whatever its tokens."""
    if size > limits.prompt_bytes:
        raise bad(
            f"the {field} is {size} bytes: more than this model's context of "
            f"{limits.context_size} tokens can hold ({limits.prompt_bytes} bytes at most)",
            field,
        )


def _prompt(body: dict[str, Any], limits: Limits) -> str | list[int]:
    """One prompt, as text or token ids; a one-element batch of text is unwrapped."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
        prompt = prompt[0]
    is_ids = isinstance(prompt, list) and all(type(i) is int for i in prompt)
    if not (isinstance(prompt, str) or is_ids) or not prompt:
        raise bad("prompt must be one non-empty string or list of token ids", "prompt")
    if isinstance(prompt, str):
        check_text_size(len(prompt.encode("utf-8", "surrogatepass")), limits, "prompt")
    else:
        check_ids(prompt, limits, "prompt")
    return prompt


def _messages(body: dict[str, Any], limits: Limits) -> list[Message]:
    """OpenAI chat messages as CWM's: system, user, assistant, and `tool` with a name
    (CWM's role is `tool: NAME`, which is accepted as it is too)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages")
    converted = [_message(message) for message in messages]
    size = sum(len(m.role) + len(m.content.encode("utf-8", "surrogatepass")) for m in converted)
    check_text_size(size, limits, "messages")
    return converted


def _message(message: object) -> Message:
    if not isinstance(message, dict):
        raise bad("each message must be an object with a role and content", "messages")
    if message.get("tool_calls"):
        raise bad("tool_calls are not supported: CWM's tool calls are text", "messages")
    role, content = message.get("role"), _content(message.get("content"))
    if role == "tool":
        name = message.get("name")
        if not isinstance(name, str):
            raise bad("a tool message needs a name: CWM's role is `tool: NAME`", "messages")
        role = f"tool: {name}"
    if role not in (SYSTEM, USER, ASSISTANT) and not (
        isinstance(role, str) and role.startswith("tool: ")
    ):
        raise bad(
            f"a message's role must be system, user, assistant or tool, not {role!r}", "messages"
        )
    try:
        return Message(role, content)
    except ValueError as exc:
        raise bad(str(exc), "messages") from None


def _content(content: object) -> str:
    """A message's text: a string, or a list of text parts (other parts are refused)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    raise bad("a message's content must be text (a string or a list of text parts)", "messages")


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """What this server does not do is refused, not silently ignored: no logprobs or
    tool schemas, and CWM's own stop tokens as the only stops."""
    for field in _UNSUPPORTED:
        if body.get(field):
            raise bad(f"{field} is not supported", field)
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise bad("response_format is not supported: CWM answers in text", "response_format")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(s in STOP_TOKENS for s in stop):
        raise bad(
            f"stop may only name CWM's stop tokens {list(STOP_TOKENS)}: "
            "this server always stops on them and on nothing else",
            "stop",
        )


def _number(
    body: dict[str, Any],
    field: str,
    default: Any,
    kind: type[int] | type[float],
    minimum: float | None = None,
) -> Any:
    """A numeric field, checked; JSON `null` means the default."""
    value = body.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"{field} must be a number", field)
    if isinstance(value, float) and not math.isfinite(value):
        raise bad(f"{field} must be a finite number", field)
    if kind is int and value != int(value):
        raise bad(f"{field} must be an integer", field)
    if minimum is not None and value < minimum:
        raise bad(f"{field} must be >= {minimum:g}", field)
    return kind(value)
