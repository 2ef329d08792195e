"""A minimal OpenAI-compatible completions server over the transformers backend.

It lets the `openai:URL` backend, and anything else that speaks `/v1/completions`,
use local weights where vLLM is not installed, and it is the reference the tests
check the raw-prompt path against. Prompts are tokenised as vLLM does (special-token
strings become special tokens); one model is shared, so generation is serialised.

    cwm-agent serve --model DIR [--port 8000]
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cwm_agent.model.hf import Generated, TransformersPolicy
from cwm_agent.model.spec import SamplingConfig
from cwm_agent.protocol.chat import STOP_TOKENS, stop_token_ids

_MAX_BODY_BYTES = 64 * 1024 * 1024
_UNSUPPORTED = ("stream", "echo", "logprobs", "suffix")


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body."""

    def __init__(self, status: HTTPStatus, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass(frozen=True)
class _Completion:
    """A checked `/v1/completions` request: what generation and the reply need."""

    prompt: str | list[int]
    extra_stops: list[int]
    max_tokens: int
    sampling: SamplingConfig
    return_token_ids: bool


class CompletionServer(ThreadingHTTPServer):
    """Holds the one policy every request thread shares."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], policy: TransformersPolicy) -> None:
        super().__init__(address, _Handler)
        self.policy = policy
        self.model_name = policy.name
        self.context_size: int = policy.model.config.max_position_embeddings
        self.generation_lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def complete(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answers one `/v1/completions` body: check it, generate, reply as vLLM does."""
        completion = self._check(request)
        generated, stop_id = self._generate(completion)
        return self._response(completion, generated, stop_id)

    def _check(self, request: dict[str, Any]) -> _Completion:
        """Every refusal happens here, before the model is touched, in a fixed order
        (the first problem of a request is the one its error names)."""
        model = request.get("model")
        if model is not None and model != self.model_name:
            raise RequestError(HTTPStatus.NOT_FOUND, f"the model {model!r} does not exist", "model")
        prompt = _prompt(request)
        extra_stops = request.get("stop_token_ids") or []
        if not isinstance(extra_stops, list) or not all(type(i) is int for i in extra_stops):
            raise RequestError(
                HTTPStatus.BAD_REQUEST, "stop_token_ids must be token ids", "stop_token_ids"
            )
        max_tokens = _number(request, "max_tokens", 16, int, minimum=1)
        temperature = _number(request, "temperature", 1.0, float, minimum=0)
        top_p = _number(request, "top_p", 1.0, float)
        if not 0 < top_p <= 1:
            raise RequestError(HTTPStatus.BAD_REQUEST, "top_p must be in (0, 1]", "top_p")
        seed = _number(request, "seed", None, int)
        _refuse_unsupported(request)
        return _Completion(
            prompt=prompt,
            extra_stops=extra_stops,
            max_tokens=max_tokens,
            sampling=SamplingConfig(temperature=temperature, top_p=top_p, seed=seed),  # 0: greedy
            return_token_ids=bool(request.get("return_token_ids")),
        )

    def _generate(self, completion: _Completion) -> tuple[Generated, int | None]:
        """Tokenise, check the context and generate under one lock: the model is shared and
        the tokenizer is not thread-safe. Returns the continuation and its stop token's id."""
        with self.generation_lock:
            tokenizer = self.policy.tokenizer
            prompt = completion.prompt
            ids = (
                prompt
                if isinstance(prompt, list)
                else tokenizer.encode(prompt, add_special_tokens=False, split_special_tokens=False)
            )
            max_tokens = completion.max_tokens
            if len(ids) + max_tokens > self.context_size:
                raise RequestError(
                    HTTPStatus.BAD_REQUEST,
                    f"this model's maximum context length is {self.context_size} tokens, "
                    f"but {len(ids)} prompt tokens + max_tokens {max_tokens} were requested",
                    "max_tokens",
                )
            stops = [*stop_token_ids(tokenizer), *completion.extra_stops]
            generated = self.policy.generate_ids(
                [ids], max_tokens, completion.sampling, stop_ids=stops
            )[0]
            stop_id = (
                None if generated.stop is None else tokenizer.convert_tokens_to_ids(generated.stop)
            )
        return generated, stop_id

    def _response(
        self, completion: _Completion, generated: Generated, stop_id: int | None
    ) -> dict[str, Any]:
        """The OpenAI `text_completion` body; the stop token counts as a completion token."""
        completion_tokens = len(generated.token_ids) + (generated.stop is not None)
        # As vLLM: a stop on a requested id is named by the id, on a stop string by the string.
        stop_reason = stop_id if stop_id in completion.extra_stops else generated.stop
        token_ids = [*generated.token_ids, *([] if stop_id is None else [stop_id])]
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [
                {
                    "index": 0,
                    "text": generated.text,
                    "logprobs": None,
                    "finish_reason": generated.finish_reason,
                    "stop_reason": stop_reason,
                    **({"token_ids": token_ids} if completion.return_token_ids else {}),
                }
            ],
            "usage": {
                "prompt_tokens": generated.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": generated.prompt_tokens + completion_tokens,
            },
        }

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": self.model_name, "object": "model", "created": 0, "owned_by": "cwm-agent"}
            ],
        }


def _prompt(request: dict[str, Any]) -> str | list[int]:
    """One prompt, as text or token ids; a one-element batch of text is unwrapped."""
    prompt = request.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and not isinstance(prompt[0], int):
        prompt = prompt[0]
    is_ids = isinstance(prompt, list) and all(type(i) is int for i in prompt)
    if not (isinstance(prompt, str) or is_ids) or not prompt:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            "prompt must be one non-empty string or list of token ids",
            "prompt",
        )
    return prompt


def _refuse_unsupported(request: dict[str, Any]) -> None:
    """What this server does not do is refused, not silently ignored: one choice, no
    streaming or logprobs, and CWM's own stop tokens as the only stops."""
    if _number(request, "n", 1, int) != 1:
        raise RequestError(HTTPStatus.BAD_REQUEST, "only n=1 is supported", "n")
    for field in _UNSUPPORTED:
        if request.get(field):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"{field} is not supported", field)
    stop = request.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(s in STOP_TOKENS for s in stop):
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"stop may only name CWM's stop tokens {list(STOP_TOKENS)}: "
            "this server always stops on them and on nothing else",
            "stop",
        )


def _number(
    request: dict[str, Any],
    field: str,
    default: Any,
    kind: type[int] | type[float],
    minimum: float | None = None,
) -> Any:
    """A numeric field, checked; JSON `null` means the default."""
    value = request.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{field} must be a number", field)
    if kind is int and value != int(value):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{field} must be an integer", field)
    if minimum is not None and value < minimum:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{field} must be >= {minimum:g}", field)
    return kind(value)


class _Handler(BaseHTTPRequestHandler):
    server: CompletionServer
    server_version = "cwm-agent"

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._reply(HTTPStatus.OK, self.server.models())
        else:
            self._error(RequestError(HTTPStatus.NOT_FOUND, f"no route {self.path}"))

    def do_POST(self) -> None:
        try:
            if self.path.rstrip("/") != "/v1/completions":
                raise RequestError(HTTPStatus.NOT_FOUND, f"no route {self.path}")
            self._reply(HTTPStatus.OK, self.server.complete(self._body()))
        except RequestError as exc:
            self._error(exc)
        except Exception as exc:  # the client gets the reason; the server keeps serving
            self.log_error("generation failed: %r", exc)
            self._error(RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"generation failed: {exc}"))

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required") from None
        if not 0 <= length <= _MAX_BODY_BYTES:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the request is too large")
        try:
            body = json.loads(self.rfile.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return body

    def _error(self, exc: RequestError) -> None:
        kind = "server_error" if exc.status >= 500 else "invalid_request_error"
        error = {"message": str(exc), "type": kind, "param": exc.param, "code": exc.status.value}
        self._reply(exc.status, {"error": error})

    def _reply(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.log_error("the client left before its reply was ready")


def serve(
    policy: TransformersPolicy, host: str = "127.0.0.1", port: int = 0
) -> tuple[CompletionServer, threading.Thread]:
    """Starts serving in a daemon thread; stop with `server.shutdown(); server.server_close()`.
    The model is listed under `policy.name`, as vLLM lists the `--model` it was given."""
    server = CompletionServer((host, port), policy)
    thread = threading.Thread(target=server.serve_forever, name="cwm-completions", daemon=True)
    thread.start()
    return server, thread
