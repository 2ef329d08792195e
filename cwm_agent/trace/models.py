"""The policies `--model` names, continuing trace prompts one frame at a time.

A trace prompt is not a chat: it is raw token ids with trace tokens as special
tokens, continued until `<|frame_sep|>` (or `<|end_of_text|>`). The transformers
backend and a server (`openai:`, which is sent token ids: vLLM accepts them, so the
special tokens are exact) continue the ids; `replay:` answers from recorded traces.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cwm_agent.model import DEFAULT_MODEL, ModelSpec, PolicyError, SamplingConfig, load_policy
from cwm_agent.model.openai_api import OpenAIPolicy
from cwm_agent.model.routing import EndpointRouter
from cwm_agent.protocol.chat import END_OF_TEXT, Piece, encode_pieces, special_token_id
from cwm_agent.trace.format import FRAME_SEP, TOKEN_EVENTS, split_ids, split_text

# The release's demo samples traces at temperature 0.6, top-p 0.95; scores are greedy.
TRACE_TEMPERATURE = 0.6
TRACE_TOP_P = 0.95
STOP_TOKENS = (FRAME_SEP, END_OF_TEXT)


@dataclass(frozen=True)
class FrameRequest:
    """Continue `prompt` by one frame; `key` names the trace (replay files are per key)."""

    key: str
    prompt: list[Piece]


class TraceModel(Protocol):
    @property
    def name(self) -> str: ...

    def continue_frames(
        self, requests: Sequence[FrameRequest], max_new_tokens: int
    ) -> list[list[Piece]]:
        """Each prompt's continuation, ending with its stop token unless cut at the limit."""
        ...


def trace_sampling(sampling: SamplingConfig, sample: bool) -> SamplingConfig:
    """`sampling` (its seed) with the trace sampling settings: greedy unless `sample`."""
    return sampling.model_copy(
        update={"temperature": TRACE_TEMPERATURE, "top_p": TRACE_TOP_P, "greedy": not sample}
    )


def load_trace_model(spec: ModelSpec, *, sample: bool, tokenizer: str | None = None) -> TraceModel:
    """The trace model `spec` names; `tokenizer` (a Hub id or directory)
    encodes prompts for an `openai:` server, which does not expose its own."""
    if spec.kind == "replay":
        return ReplayTraceModel(spec.path)
    sampling = trace_sampling(spec.sampling, sample)
    policy: Any = load_policy(spec.model_copy(update={"sampling": sampling}))
    if spec.kind == "openai":
        from cwm_agent.model.hf import load_tokenizer

        source = tokenizer or DEFAULT_MODEL
        return TokenTraceModel(policy, load_tokenizer(source, spec.load.offline))
    return TokenTraceModel(policy, policy.tokenizer)


class TokenTraceModel:
    """A policy that continues token ids: the in-process model (`generate_ids`) or a
    server or servers (`complete_ids`); prompts are encoded with `tokenizer`."""

    def __init__(self, policy: Any, tokenizer: Any) -> None:
        self.policy = policy
        self.tokenizer = tokenizer

    @property
    def name(self) -> str:
        return str(self.policy.name)

    def continue_frames(
        self, requests: Sequence[FrameRequest], max_new_tokens: int
    ) -> list[list[Piece]]:
        prompts = [encode_pieces(request.prompt, self.tokenizer) for request in requests]
        stops = [special_token_id(self.tokenizer, token) for token in STOP_TOKENS]
        if isinstance(self.policy, OpenAIPolicy | EndpointRouter):
            replies = self.policy.complete_ids(prompts, max_new_tokens, stops)
        else:
            generated = self.policy.generate_ids(prompts, max_new_tokens, stop_ids=stops)
            replies = [[*g.token_ids, *self.ids(g.stop)] for g in generated]
        return [split_ids(ids, self.tokenizer) for ids in replies]

    def ids(self, stop: str | None) -> list[int]:
        return [] if stop is None else [special_token_id(self.tokenizer, stop)]


class ReplayTraceModel:
    """`replay:PATH`: a JSON array of strings, one frame each as CWM writes it (special
    tokens spelled out, `<|frame_sep|>` included), the last one `<|end_of_text|>`; PATH
    is that file, or a folder of `KEY.json` files, one per trace. The answer to a
    prompt with k frames is frame k, so stepping back and again gives the same frame."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise PolicyError(f"replay path {path} not found: check --model replay:PATH")
        self.path = path
        self.scripts: dict[Path, list[str]] = {}

    @property
    def name(self) -> str:
        return f"replay:{self.path}"

    def script(self, key: str) -> list[str]:
        path = self.path / f"{key}.json" if self.path.is_dir() else self.path
        if path not in self.scripts:
            try:
                frames = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise PolicyError(f"replay file {path} cannot be read: {exc}") from None
            if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
                raise PolicyError(f"replay file {path} must hold a JSON array of strings")
            self.scripts[path] = frames
        return self.scripts[path]

    def continue_frames(
        self, requests: Sequence[FrameRequest], max_new_tokens: int
    ) -> list[list[Piece]]:
        replies = []
        for request in requests:
            script = self.script(request.key)
            known = sum(p.special and p.text == FRAME_SEP for p in request.prompt) - 1
            if known >= len(script):
                raise PolicyError(
                    f"{self.name} ran out: the trace {request.key} has {len(script)} frames"
                )
            reply = split_text(script[known])
            last = request.prompt[-1]
            if last.special and last.text in TOKEN_EVENTS and reply and reply[0] == last:
                reply = reply[1:]  # the prompt already holds the event token
            replies.append(reply)
        return replies


def replay_script(pieces_per_frame: Sequence[Sequence[Piece]]) -> list[str]:
    """A replay script of rendered frames, ended by `<|end_of_text|>`."""
    return ["".join(p.text for p in frame) for frame in pieces_per_frame] + [END_OF_TEXT]
