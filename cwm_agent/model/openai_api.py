"""`openai:URL`: CWM behind an OpenAI-compatible completions server (vLLM, SGLang, ours).

The conversation is rendered by `cwm_agent.protocol` and sent as a raw prompt to
`/v1/completions`, never through the server's chat template, so the server sees
exactly the text CWM was trained on. Servers tokenise a raw prompt with special
tokens recognised; message text that spells a special token (a README quoting
`<|eot_id|>`) is therefore broken up with a zero-width space first, so that it
cannot end a turn (docs/protocol.md §1).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from cwm_agent.model.policy import Completion, PolicyError, TokenLimit, per_conversation
from cwm_agent.model.spec import SamplingConfig
from cwm_agent.protocol.chat import EOT, STOP_TOKENS, ChatTokenizer, Message, render_text

_SPECIAL_TOKEN = re.compile(r"<\|(?=[A-Za-z0-9_]+\|>)")
_ZERO_WIDTH_SPACE = "\u200b"
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_CONNECT_TIMEOUT_S = 10.0
RETRIES = 5  # attempts after the first: about 30 s of backoff in all
RETRIES_ENV = "CWM_AGENT_API_RETRIES"  # more, to ride out a server restart (minutes for vLLM)
_MAX_ERROR_CHARS = 300
API_KEY_ENV = "CWM_AGENT_API_KEY"  # the key `cwm-agent serve` asks for (as vLLM's VLLM_API_KEY)


class _Retryable(Exception):
    """A failure worth another attempt (connection, timeout, 429, 5xx)."""


def base_url(url: str) -> str:
    """The server root: `URL`, `URL/` and `URL/v1` all name the same server."""
    root = url.strip().rstrip("/")
    root = root.removesuffix("/v1")
    if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", root):
        raise PolicyError(f"--model openai:{url}: expected a URL such as http://HOST:8000")
    return root


def prompt_text(conversation: Sequence[Message]) -> str:
    """`render_text` with special-token spellings inside messages made inert."""
    safe = [
        dataclasses.replace(
            m, content=_SPECIAL_TOKEN.sub("<" + _ZERO_WIDTH_SPACE + "|", m.content), token_ids=None
        )
        for m in conversation
    ]
    return render_text(safe)


class OpenAIPolicy:
    """Sends each conversation as one `/v1/completions` request, k of them concurrently."""

    tokenizer: ChatTokenizer | None = None  # the server's tokenizer is not ours to read

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        timeout_s: float = 600,
        retries: int | None = None,
        concurrency: int = 8,
        sampling: SamplingConfig = SamplingConfig(),
        api_key: str | None = None,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.url = base_url(url)
        self.model = model
        self.timeout_s = timeout_s
        self.retries = _retries_from_env() if retries is None else retries
        self.concurrency = max(1, concurrency)
        self.temperature = 0.0 if sampling.is_greedy else sampling.temperature
        self.top_p = sampling.top_p
        self.seed = sampling.seed
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # Each request gets seed + its number, so k identical prompts still get k samples.
        self._request_numbers = itertools.count()
        self._lock = threading.Lock()
        self._stop_ids: dict[int, str] | None = None
        self._session = requests.Session()
        self._session.mount(self.url, HTTPAdapter(pool_maxsize=self.concurrency))
        key = api_key or os.environ.get("OPENAI_API_KEY") or os.environ.get(API_KEY_ENV)
        if key:
            self._session.headers["Authorization"] = f"Bearer {key}"

    @property
    def name(self) -> str:
        return f"openai:{self.url}"

    def complete(
        self, conversations: Sequence[Sequence[Message]], max_new_tokens: TokenLimit
    ) -> list[Completion]:
        if not conversations:
            return []
        limits = per_conversation(max_new_tokens, len(conversations))
        model = self._model()
        jobs = [
            (conversation, None if self.seed is None else self.seed + next(self._request_numbers))
            for conversation in conversations
        ]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs))) as pool:
            futures = [
                pool.submit(self._complete_one, conv, seed, model, limit)
                for (conv, seed), limit in zip(jobs, limits, strict=True)
            ]
            try:
                return [future.result() for future in futures]
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    def _complete_one(
        self, conversation: Sequence[Message], seed: int | None, model: str, max_new_tokens: int
    ) -> Completion:
        started = time.monotonic()
        body: dict[str, Any] = {
            "model": model,
            "prompt": prompt_text(conversation),
            "max_tokens": max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": list(STOP_TOKENS),
            "skip_special_tokens": False,
            "include_stop_str_in_output": False,
        }
        if seed is not None:
            body["seed"] = seed
        reply = self._request("POST", "/v1/completions", body)
        try:
            choice = reply["choices"][0]
            text = choice["text"]
            if not isinstance(text, str):
                raise TypeError
            finish_reason = choice["finish_reason"]
            usage = reply["usage"]
            prompt_tokens = int(usage["prompt_tokens"])
            completion_tokens = int(usage["completion_tokens"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise PolicyError(
                f"{self.name}: the server's completion reply is not OpenAI-shaped: "
                f"{_one_line(json.dumps(reply))}"
            ) from None
        if finish_reason not in ("stop", "length"):
            raise PolicyError(f"{self.name}: the server ended a reply with {finish_reason!r}")
        stop = None
        if finish_reason == "stop":
            stop = self._stop_token(choice.get("stop_reason"))
        for token in STOP_TOKENS:  # servers that ignore include_stop_str_in_output
            if text.endswith(token):
                text, stop, finish_reason = text.removesuffix(token), token, "stop"
                break
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
            stop=stop,
            duration_s=time.monotonic() - started,
        )

    def complete_ids(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int]
    ) -> list[list[int]]:
        """Continue token-id prompts (vLLM takes ids, so special tokens are exact) until one
        of `stop_ids`: each reply's ids, with the stop id when it stopped on one."""
        model = self._model()
        seeds = [
            None if self.seed is None else self.seed + next(self._request_numbers) for _ in prompts
        ]
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(prompts)))) as pool:
            jobs = [
                pool.submit(self._complete_ids_one, p, seed, model, max_new_tokens, stop_ids)
                for p, seed in zip(prompts, seeds, strict=True)
            ]
            return [job.result() for job in jobs]

    def _complete_ids_one(
        self,
        prompt: Sequence[int],
        seed: int | None,
        model: str,
        max_new_tokens: int,
        stop_ids: Sequence[int],
    ) -> list[int]:
        body: dict[str, Any] = {
            "model": model,
            "prompt": list(prompt),
            "max_tokens": max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop_token_ids": list(stop_ids),
            "skip_special_tokens": False,
            "return_token_ids": True,
            **({} if seed is None else {"seed": seed}),
        }
        reply = self._request("POST", "/v1/completions", body)
        try:
            choice = reply["choices"][0]
            ids = [int(i) for i in choice["token_ids"]]
            stop_reason = choice.get("stop_reason")
        except (KeyError, IndexError, TypeError, ValueError):
            raise PolicyError(
                f"{self.name}: the reply has no token_ids (the server must accept "
                f"return_token_ids, as vLLM does): {_one_line(json.dumps(reply))}"
            ) from None
        named = isinstance(stop_reason, int) and stop_reason in stop_ids
        if named and (not ids or ids[-1] != stop_reason):
            ids.append(stop_reason)  # servers that leave the stop id out of token_ids
        return ids

    def _stop_token(self, stop_reason: object) -> str:
        """vLLM names the stop string, or the id of a stop token from the model's
        generation config, or nothing for the tokenizer's own end token."""
        if isinstance(stop_reason, str) and stop_reason in STOP_TOKENS:
            return stop_reason
        if isinstance(stop_reason, int) and not isinstance(stop_reason, bool):
            return self._stop_token_ids().get(stop_reason, EOT)
        return EOT

    def _stop_token_ids(self) -> dict[int, str]:
        """Ids of the stop tokens, asked once from vLLM's `/tokenize` by their strings;
        empty where the server has no such endpoint."""
        with self._lock:
            if self._stop_ids is None:
                self._stop_ids = {}
                try:
                    reply = self._request(
                        "POST",
                        "/tokenize",
                        {
                            "model": self.model,
                            "prompt": "".join(STOP_TOKENS),
                            "add_special_tokens": False,
                        },
                        attempts=1,
                    )
                    ids = reply["tokens"]
                    if len(ids) == len(STOP_TOKENS):
                        self._stop_ids = dict(zip(ids, STOP_TOKENS, strict=True))
                except (PolicyError, KeyError, TypeError):
                    pass
            return self._stop_ids

    def _model(self) -> str:
        """The model to name in requests: given, or the server's first one."""
        with self._lock:
            if self.model is None:
                reply = self._request("GET", "/v1/models")
                try:
                    self.model = str(reply["data"][0]["id"])
                except (KeyError, IndexError, TypeError):
                    raise PolicyError(
                        f"{self.name}: /v1/models lists no model; give one with model="
                    ) from None
            return self.model

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        attempts: int | None = None,
    ) -> Any:
        """One JSON call with retries; every failure ends as a one-line PolicyError."""
        attempts = max(1, self.retries + 1 if attempts is None else attempts)
        last = ""
        url = self.url + path
        for attempt in range(attempts):
            if attempt:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * random.uniform(0.5, 1.0))
            try:
                return self._attempt(method, url, body)
            except _Retryable as exc:
                last = str(exc)
        raise PolicyError(f"{url}: no answer after {attempts} attempts: {last}")

    def _attempt(self, method: str, url: str, body: dict[str, Any] | None) -> Any:
        try:
            response = self._session.request(
                method,
                url,
                json=body,
                timeout=(min(_CONNECT_TIMEOUT_S, self.timeout_s), self.timeout_s),
            )
        except requests.Timeout:
            raise _Retryable(f"timed out after {self.timeout_s:g} s") from None
        except requests.ConnectionError as exc:
            raise _Retryable(f"cannot connect: {_root_cause(exc)}") from None
        except requests.RequestException as exc:
            raise PolicyError(f"{url}: {_one_line(str(exc))}") from None
        if response.status_code != 200:
            message = f"HTTP {response.status_code}: {_error_message(response)}"
            if response.status_code in _RETRY_STATUS:
                raise _Retryable(message)
            raise PolicyError(f"{url}: {message}")
        try:
            return response.json()
        except ValueError:
            raise PolicyError(f"{url}: the reply is not JSON: {_one_line(response.text)}") from None


def _retries_from_env() -> int:
    """`CWM_AGENT_API_RETRIES`, else RETRIES; each retry waits twice the last (up to
    max_backoff_s), so 10 wait 1.5 to 3 minutes in all for a server to come back."""
    text = os.environ.get(RETRIES_ENV, "").strip()
    if not text:
        return RETRIES
    if not text.isdigit():
        raise PolicyError(f"{RETRIES_ENV}={text!r}: expected a whole number of retries, e.g. 10")
    return int(text)


def _error_message(response: requests.Response) -> str:
    """The server's own words: OpenAI's `error.message`, vLLM's `message`, FastAPI's `detail`."""
    try:
        body = response.json()
    except ValueError:
        return _one_line(response.text or response.reason or "")
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return _one_line(str(error["message"]))
        for key in ("message", "detail", "error"):
            if key in body:
                return _one_line(str(body[key]))
    return _one_line(json.dumps(body))


def _root_cause(exc: BaseException) -> str:
    """The operating system's reason (e.g. "Connection refused") under requests' wrapping."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return _one_line(str(exc))


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."
