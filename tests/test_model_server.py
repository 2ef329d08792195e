"""`cwm-agent serve` under bad and hostile input (issue 24): every request gets a clear
answer, none blocks the others, and the command fails in one line when it cannot listen.

The server is the real one over a tiny random CWM, bound to 127.0.0.1; requests that
no client library would send (a short body, NaN, deep nesting) go over a raw socket.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cwm_agent.model.hf import TransformersPolicy
from cwm_agent.model.server import CompletionServer, ServeError, listen, serve
from cwm_agent.protocol.chat import render_ids
from tests import helpers
from tests.conftest import run_cli, start_cli

local, server = helpers.local, helpers.server


def raw_post(url: str, head: str, body: bytes, timeout: float = 20) -> tuple[int, dict[str, Any]]:
    """POST /v1/completions with hand-written headers: the status and the JSON answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
        connection.sendall(body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def post(server: CompletionServer, body: dict[str, Any]) -> requests.Response:
    return requests.post(server.url + "/v1/completions", json=body, timeout=30)


@pytest.fixture
def model_busy(local: TransformersPolicy) -> Iterator[None]:
    """A generation in flight, held after its first token until the test ends: the model
    and its lock are taken, as by a long request."""
    started, release = threading.Event(), threading.Event()

    def hold(_: int, __: int) -> None:
        started.set()
        release.wait(60)

    ids = render_ids(helpers.sample_conversations()[2], local.tokenizer)
    thread = threading.Thread(target=local.generate_ids, args=([ids], 2), kwargs={"on_token": hold})
    thread.start()
    assert started.wait(60)
    yield
    release.set()
    thread.join(60)


def test_what_cannot_fit_the_context_is_refused_without_waiting_for_the_model(
    server: CompletionServer, model_busy: None
) -> None:
    limits = server.limits
    too_many_bytes = post(server, {"prompt": "a" * (limits.prompt_bytes + 1)})
    assert too_many_bytes.status_code == 400
    error = too_many_bytes.json()["error"]
    assert error["param"] == "prompt"
    assert error["message"] == (
        f"the prompt is {limits.prompt_bytes + 1} bytes: more than this model's context of "
        f"{limits.context_size} tokens can hold ({limits.prompt_bytes} bytes at most)"
    )
    # Under the byte bound but over the context in tokens: tokenised outside the lock.
    words = " hello" * limits.context_size
    assert len(words.encode()) < limits.prompt_bytes
    too_many_tokens = post(server, {"prompt": words, "max_tokens": 1})
    assert too_many_tokens.status_code == 400
    assert "maximum context length is 16384 tokens" in too_many_tokens.json()["error"]["message"]
    chat = requests.post(
        server.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": words}]},
        timeout=30,
    )
    assert chat.status_code == 400
    assert "maximum context length" in chat.json()["error"]["message"]


def test_the_body_cap_is_what_the_context_can_hold(server: CompletionServer) -> None:
    # Announced but never sent: refused from the header alone.
    cap = server.max_body_bytes
    assert server.limits.prompt_bytes < cap <= server.limits.prompt_bytes + 2**20  # + the rest
    status, answer = raw_post(server.url, f"Content-Length: {cap + 1}\r\n", b"")
    assert status == 413
    assert answer["error"]["message"] == (
        f"the request is {cap + 1} bytes: this server takes at most {cap} "
        "(what the model's context of 16384 tokens can hold)"
    )


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        (b'{"prompt": [999999999]}', "prompt", "prompt must be token ids from 0 to 767"),
        (b'{"prompt": [-5]}', "prompt", "prompt must be token ids from 0 to 767"),
        (b'{"prompt": [5], "stop_token_ids": [1e30]}', "stop_token_ids", "must be token ids"),
        (b'{"prompt": [5], "stop_token_ids": [10000]}', "stop_token_ids", "from 0 to 767"),
        (b'{"prompt": "hi", "temperature": NaN}', None, "NaN is not a JSON number"),
        (b'{"prompt": "hi", "top_p": -Infinity}', None, "-Infinity is not a JSON number"),
        (b'{"prompt": "hi", "max_tokens": 1e400}', "max_tokens", "must be a finite number"),
        (b'{"prompt": "hi", "seed": 1e300}', "seed", "seed must be an integer from"),
        (b'{"prompt": "hi", "seed": -1e30}', "seed", "seed must be an integer from"),
        (b'{"prompt": "hi", "n": 1000}', "n", "n must be at most 16"),
        (b'{"prompt": "hi", "tools": [{}]}', "tools", "tools is not supported"),
        (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "nested too deeply"),
        (b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, None, "nested too deeply"),
    ],
)
def test_bad_input_is_a_400_with_one_line(
    server: CompletionServer, body: bytes, param: str | None, message: str
) -> None:
    status, answer = raw_post(server.url, f"Content-Length: {len(body)}\r\n", body)
    assert status == 400
    assert answer["error"]["param"] == param
    assert message in answer["error"]["message"]
    assert "\n" not in answer["error"]["message"]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"role": "tool", "content": "x"}, "a tool message needs a name"),
        ({"role": "robot", "content": "x"}, "a message's role must be system, user, assistant"),
        ({"role": "user", "content": [{"type": "image_url"}]}, "content must be text"),
        ({"role": "assistant", "content": None, "tool_calls": [{}]}, "tool_calls are not"),
    ],
)
def test_chat_messages_cwm_cannot_read_are_refused(
    server: CompletionServer, message: dict[str, Any], reason: str
) -> None:
    answer = requests.post(
        server.url + "/v1/chat/completions", json={"messages": [message]}, timeout=30
    )
    assert answer.status_code == 400
    assert reason in answer.json()["error"]["message"]


def test_a_body_that_never_arrives_times_out(local: TransformersPolicy) -> None:
    impatient = CompletionServer(("127.0.0.1", 0), local, read_timeout_s=0.5)
    thread = threading.Thread(target=impatient.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        status, answer = raw_post(impatient.url, "Content-Length: 100\r\n", b"{}")
        assert status == 408
        assert answer["error"]["message"] == "the body did not arrive: no data for 0.5 s"
        # The server goes on serving.
        assert post(impatient, {"prompt": "hi", "max_tokens": 1}).status_code == 200
    finally:
        impatient.shutdown()
        impatient.server_close()
        thread.join(10)


def test_a_client_that_leaves_a_stream_stops_its_generation(
    server: CompletionServer, local: TransformersPolicy
) -> None:
    before = local.stats.generated_tokens  # counts generations that finish
    # Greedy, this prompt's reply ends after 197 tokens: far more than the stream gets.
    body = {"prompt": "hi", "max_tokens": 5000, "temperature": 0, "stream": True}
    data = json.dumps(body).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        head = f"POST /v1/completions HTTP/1.1\r\nContent-Length: {len(data)}\r\n\r\n"
        connection.sendall(head.encode() + data)
        received = b""
        while b"data: " not in received:  # the first token's text
            received += connection.recv(65536)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # The next request waits for the model: once it is answered, the stream is over.
    assert post(server, {"prompt": "hi", "max_tokens": 1}).status_code == 200
    assert local.stats.generated_tokens - before == 1  # the stream's generation never finished


def test_an_api_key_is_required_when_set(local: TransformersPolicy) -> None:
    keyed, thread = serve(local, api_key="s3cret")
    try:
        models = keyed.url + "/v1/models"
        assert requests.get(models, timeout=10).status_code == 401
        wrong = requests.get(models, headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401
        assert wrong.json()["error"]["message"].startswith("a valid API key is required")
        unsent = requests.post(keyed.url + "/v1/completions", json={"prompt": "hi"}, timeout=10)
        assert unsent.status_code == 401
        right = requests.get(models, headers={"Authorization": "Bearer s3cret"}, timeout=10)
        assert right.status_code == 200
    finally:
        keyed.shutdown()
        keyed.server_close()
        thread.join(10)


def test_a_busy_port_is_named_in_one_line(tiny_cwm_dir: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_cli(
            "serve", "--model", str(tiny_cwm_dir), "--offline", "--port", str(port), timeout=120
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: port {port} on 127.0.0.1 is in use: stop what holds it, "
        "or choose another with --port"
    )
    assert "Traceback" not in result.stderr
    assert "Errno" not in result.stderr


def test_an_address_this_machine_lacks_is_one_line(local: TransformersPolicy) -> None:
    with pytest.raises(ServeError) as error:
        listen(local, "192.0.2.1", 8000)  # TEST-NET-1: never this machine's
    assert str(error.value) == (
        "cannot listen on 192.0.2.1:8000: Cannot assign requested address: "
        "choose another --host or --port"
    )


def test_serving_beyond_this_machine_warns(tiny_cwm_dir: Path) -> None:
    process = start_cli(
        "serve", "--model", str(tiny_cwm_dir), "--offline", "--host", "0.0.0.0", "--port", "0"
    )
    lines: queue.Queue[str] = queue.Queue()
    readers = [
        threading.Thread(target=lambda pipe=pipe: [lines.put(line) for line in pipe], daemon=True)
        for pipe in (process.stdout, process.stderr)
    ]
    for reader in readers:
        reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not any(line.startswith("serving ") for line in seen):
            assert time.monotonic() < deadline, seen
            assert process.poll() is None, seen
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=1))
    finally:
        process.kill()
        process.wait(30)
    assert (
        "warning: --host 0.0.0.0 is reachable from other machines and anyone there can use "
        "the model: set --api-key (or CWM_AGENT_API_KEY) to require a key\n"
    ) in seen
