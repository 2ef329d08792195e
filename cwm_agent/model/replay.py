"""`replay:PATH`: scripted replies, for re-running or hand-writing trajectories.

PATH holds a JSON array of strings, each one assistant reply exactly as the
model would generate it after the `<think>\\n` prefix and before the stop token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from cwm_agent.model.policy import Completion, PolicyError, TokenLimit
from cwm_agent.model.tokens import estimate_tokens
from cwm_agent.protocol.chat import EOT, ChatTokenizer, Message, render_text


class ReplayPolicy:
    """Returns the scripted replies in order; running out is an error, not a loop."""

    tokenizer: ChatTokenizer | None = None

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            replies = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PolicyError(f"replay file {path} not found: check --model replay:PATH") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PolicyError(f"replay file {path} is not valid JSON: {exc}") from None
        if not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
            raise PolicyError(
                f"replay file {path} must hold a JSON array of strings (one per assistant reply)"
            )
        for number, reply in enumerate(replies, 1):
            try:
                reply.encode("utf-8")
            except UnicodeEncodeError as exc:  # JSON allows a lone surrogate such as \ud800
                raise PolicyError(
                    f"replay file {path}: reply {number} is not text (a lone surrogate "
                    f"{reply[exc.start]!r} at character {exc.start}): remove it"
                ) from None
        self.replies: list[str] = replies
        self.used = 0

    @property
    def name(self) -> str:
        return f"replay:{self.path}"

    def complete(
        self, conversations: Sequence[Sequence[Message]], max_new_tokens: TokenLimit
    ) -> list[Completion]:
        completions = []
        for conversation in conversations:
            started = time.monotonic()
            if self.used >= len(self.replies):
                raise PolicyError(
                    f"replay file {self.path} ran out after {len(self.replies)} replies: "
                    "the conversation needs another one"
                )
            text = self.replies[self.used]
            self.used += 1
            completions.append(
                Completion(
                    text=text,
                    prompt_tokens=estimate_tokens(render_text(conversation)),
                    completion_tokens=estimate_tokens(text) + 1,  # + the stop token
                    finish_reason="stop",
                    stop=EOT,
                    duration_s=time.monotonic() - started,
                )
            )
        return completions
