"""A minimal OpenAI-compatible server over the transformers backend.

It lets the `openai:URL` backend, and OpenAI clients (the openai SDK, LiteLLM-based
agents, editors), use local weights where vLLM is not installed, and it is the
reference the tests check the raw-prompt path against. `/v1/completions` tokenises a
text prompt as vLLM does (special-token strings become special tokens);
`/v1/chat/completions` renders messages with CWM's own chat format
(`cwm_agent.protocol`). Both stream (SSE) on request, and `n` choices are one batch.

One model is shared, so generation is serialised; everything before it (reading,
checking and tokenising a request) runs outside that lock, each request on its own
copy of the tokenizer, so one huge prompt cannot hold up a small one. What cannot fit
the context is refused before it is tokenised (`Limits.prompt_bytes`).

    cwm-agent serve --model DIR [--port 8000] [--api-key KEY]
"""

from __future__ import annotations

import copy
import errno
import hmac
import ipaddress
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cwm_agent.errors import UserError
from cwm_agent.model.hf import Generated, TransformersPolicy
from cwm_agent.model.openai_api import API_KEY_ENV
from cwm_agent.model.server_replies import Choice, Event, Reply, Stream
from cwm_agent.model.server_requests import (
    Endpoint,
    Limits,
    Request,
    RequestError,
    bad,
    check,
)
from cwm_agent.protocol.chat import Message, render_ids, stop_token_ids

READ_TIMEOUT_S = 30.0  # a client that stops sending (or reading) for this long is dropped
_BODY_SLACK_BYTES = 1 << 20  # the rest of a body besides its prompt
_ROUTES: dict[str, Endpoint] = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}


class ServeError(UserError):
    """The server cannot start (a busy port, an address this machine does not have)."""


class _ClientLeft(Exception):
    """The client closed its connection, or stopped reading, mid-stream."""


@dataclass(frozen=True)
class _Job:
    """A request tokenised and checked against the context: ready to generate."""

    request: Request
    ids: list[int]
    max_tokens: int
    stops: list[int]  # CWM's stop tokens and those the request added


class _Tokenizers:
    """Copies of the model's tokenizer, lent one per request. A fast tokenizer keeps
    per-call options such as `split_special_tokens` as state, so two threads must not
    share one; a copy per request lets requests tokenise at once, outside the model's lock.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._original = copy.deepcopy(tokenizer)  # never lent: copies are made from it
        self._idle = [copy.deepcopy(tokenizer)]
        self._lock = threading.Lock()

    @contextmanager
    def borrow(self) -> Iterator[Any]:
        with self._lock:
            tokenizer = self._idle.pop() if self._idle else copy.deepcopy(self._original)
        try:
            yield tokenizer
        finally:
            with self._lock:
                self._idle.append(tokenizer)


class CompletionServer(ThreadingHTTPServer):
    """Holds the one policy every request thread shares, and what requests are checked by."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        policy: TransformersPolicy,
        api_key: str | None = None,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        super().__init__(address, _Handler)
        self.policy = policy
        self.model_name = policy.name
        self.api_key = api_key or None
        self.read_timeout_s = read_timeout_s
        tokenizer = policy.tokenizer
        self.limits = Limits(
            context_size=policy.model.config.max_position_embeddings,
            vocab_size=len(tokenizer),
            longest_token_bytes=max(len(token.encode("utf-8")) for token in tokenizer.get_vocab()),
        )
        self.max_body_bytes = self.limits.prompt_bytes + _BODY_SLACK_BYTES
        self._stop_ids = list(stop_token_ids(tokenizer))
        self._tokenizers = _Tokenizers(tokenizer)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def prepare(self, endpoint: Endpoint, body: dict[str, Any]) -> _Job:
        """Check, tokenise and fit a request to the context; the model is not touched."""
        request = check(endpoint, body, self.model_name, self.limits)
        ids = self._tokenize(request.prompt)
        context = self.limits.context_size
        max_tokens = request.max_tokens or max(1, context - len(ids))
        if len(ids) + max_tokens > context:
            raise bad(
                f"this model's maximum context length is {context} tokens, "
                f"but {len(ids)} prompt tokens + max_tokens {max_tokens} were requested",
                "max_tokens",
            )
        return _Job(request, ids, max_tokens, [*self._stop_ids, *request.extra_stops])

    def generate(
        self, job: _Job, on_token: Callable[[int, int], None] | None = None
    ) -> list[Choice]:
        """The request's `n` choices, generated as one batch under the model's lock."""
        request = job.request
        generated = self.policy.generate_ids(
            [job.ids] * request.n,
            job.max_tokens,
            request.sampling,
            stop_ids=job.stops,
            on_token=on_token,
        )
        return [self._choice(request, g) for g in generated]

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids, as `Generated.text` has it: a stream's pieces, decoded in
        the generating thread under the model's lock, as the policy decodes its own."""
        return self.policy.tokenizer.decode(
            ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": self.model_name, "object": "model", "created": 0, "owned_by": "cwm-agent"}
            ],
        }

    def _tokenize(self, prompt: str | list[int] | list[Message]) -> list[int]:
        if isinstance(prompt, list) and all(type(i) is int for i in prompt):
            return list(prompt)  # type: ignore[arg-type]
        with self._tokenizers.borrow() as tokenizer:
            if isinstance(prompt, str):
                return tokenizer.encode(
                    prompt, add_special_tokens=False, split_special_tokens=False
                )
            return render_ids(prompt, tokenizer)  # type: ignore[arg-type]

    def _choice(self, request: Request, generated: Generated) -> Choice:
        stop_id = None
        if generated.stop is not None:
            with self._tokenizers.borrow() as tokenizer:
                stop_id = tokenizer.convert_tokens_to_ids(generated.stop)
        # As vLLM: a stop on a requested id is named by the id, on a stop string by the string.
        stop_reason = stop_id if stop_id in request.extra_stops else generated.stop
        token_ids = [*generated.token_ids, *([] if stop_id is None else [stop_id])]
        return Choice(
            text=generated.text,
            finish_reason=generated.finish_reason,
            stop_reason=stop_reason,
            completion_tokens=len(token_ids),
            token_ids=token_ids if request.return_token_ids else None,
        )


def _failed(exc: Exception) -> RequestError:
    return RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"generation failed: {exc}")


def _error_body(exc: RequestError) -> Event:
    """OpenAI's error shape, which its SDK raises as the matching exception."""
    kind = "server_error" if exc.status >= 500 else "invalid_request_error"
    error = {"message": str(exc), "type": kind, "param": exc.param, "code": exc.status.value}
    return {"error": error}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class _Handler(BaseHTTPRequestHandler):
    server: CompletionServer
    server_version = "cwm-agent"

    def setup(self) -> None:
        self.timeout = self.server.read_timeout_s  # applies to every read and write
        super().setup()

    def do_GET(self) -> None:
        try:
            self._authorize()
            if self.path.rstrip("/") != "/v1/models":
                raise RequestError(HTTPStatus.NOT_FOUND, f"no route {self.path}")
            self._reply(HTTPStatus.OK, self.server.models())
        except RequestError as exc:
            self._error(exc)

    def do_POST(self) -> None:
        try:
            endpoint = _ROUTES.get(self.path.rstrip("/"))
            if endpoint is None:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no route {self.path}")
            self._authorize()
            job = self.server.prepare(endpoint, self._body())
            if job.request.stream:
                self._stream(job)
            else:
                reply = Reply(endpoint, self.server.model_name)
                self._reply(HTTPStatus.OK, reply.body(self.server.generate(job), len(job.ids)))
        except RequestError as exc:
            self._error(exc)
        except Exception as exc:  # the client gets the reason; the server keeps serving
            self.log_error("generation failed: %r", exc)
            self._error(_failed(exc))

    def _authorize(self) -> None:
        """With an API key, every request must carry it as `Authorization: Bearer KEY`."""
        key = self.server.api_key
        given = self.headers.get("Authorization", "")
        if key and not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise RequestError(
                HTTPStatus.UNAUTHORIZED, "a valid API key is required: Authorization: Bearer KEY"
            )

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required") from None
        cap = self.server.max_body_bytes
        if not 0 <= length <= cap:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the request is {length} bytes: this server takes at most {cap} "
                f"(what the model's context of {self.server.limits.context_size} tokens can hold)",
            )
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            raise RequestError(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the body did not arrive: no data for {self.server.read_timeout_s:g} s",
            ) from None
        if len(data) < length:
            raise bad(f"the body ended after {len(data)} of the {length} bytes announced")
        try:
            body = json.loads(data, parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise bad(f"the body is not JSON: {exc}") from None
        except RecursionError:
            raise bad("the body is not JSON this server reads: it is nested too deeply") from None
        if not isinstance(body, dict):
            raise bad("the body must be a JSON object")
        return body

    def _stream(self, job: _Job) -> None:
        """Server-sent events: a chunk per new piece of text, then `data: [DONE]`. A failure
        after the events began is sent as an error event (the SDK raises it)."""
        server = self.server
        reply = Reply(job.request.endpoint, server.model_name)
        stream = Stream(job.request, reply, server.decode, set(job.stops), self._event)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            stream.start()
            try:
                stream.finish(server.generate(job, on_token=stream.token), len(job.ids))
            except _ClientLeft:
                raise
            except Exception as exc:
                self.log_error("generation failed: %r", exc)
                self._event(_error_body(_failed(exc)))
            self._send_bytes(b"data: [DONE]\n\n")
        except _ClientLeft:
            self.log_error("the client left before its stream ended")

    def _event(self, event: Event) -> None:
        self._send_bytes(b"data: " + json.dumps(event).encode("utf-8") + b"\n\n")

    def _send_bytes(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as exc:
            raise _ClientLeft from exc

    def _error(self, exc: RequestError) -> None:
        self._reply(exc.status, _error_body(exc))

    def _reply(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.log_error("the client left before its reply was ready")


def listen(
    policy: TransformersPolicy, host: str, port: int, api_key: str | None = None
) -> CompletionServer:
    """A server bound to `host:port`; an address it cannot have is one line naming it."""
    try:
        return CompletionServer((host, port), policy, api_key)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(
                f"port {port} on {host} is in use: stop what holds it, "
                "or choose another with --port"
            ) from None
        raise ServeError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}: "
            "choose another --host or --port"
        ) from None


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """What to warn of when the server is reachable from other machines; None on loopback."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    if api_key:
        return (
            f"warning: --host {host} is reachable from other machines, and the API key "
            "crosses the network in clear text: serve over a trusted network or a TLS proxy"
        )
    return (
        f"warning: --host {host} is reachable from other machines and anyone there can use "
        f"the model: set --api-key (or {API_KEY_ENV}) to require a key"
    )


def serve(
    policy: TransformersPolicy, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None
) -> tuple[CompletionServer, threading.Thread]:
    """Starts serving in a daemon thread; stop with `server.shutdown(); server.server_close()`.
    The model is listed under `policy.name`, as vLLM lists the `--model` it was given."""
    server = listen(policy, host, port, api_key)
    thread = threading.Thread(target=server.serve_forever, name="cwm-completions", daemon=True)
    thread.start()
    return server, thread
