"""CWM's chat format (docs/protocol.md §1): a conversation rendered as text or token ids.

Both renderings come from one list of pieces, so they cannot disagree. Special tokens
enter only as pieces the renderer makes; every text piece is encoded as plain text, so
a README containing ``<|eot_id|>`` can never end a turn. Each piece is encoded on its
own, as CWM's tokenizer did, which also makes the ids append-only: the rendering of a
conversation is a prefix of the rendering of any continuation of it (KV-cache reuse).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOM = "<|eom_id|>"
EOT = "<|eot_id|>"
STOP_TOKENS = (EOT, EOM, END_OF_TEXT)

THINK_START = "<think>\n"
THINK_END = "</think>"

SYSTEM = "system"
USER = "user"
ASSISTANT = "assistant"
TOOL_ROLE_PREFIX = "tool: "

_TOOL_NAME = re.compile(r"[a-zA-Z_]+")


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer the renderer uses."""

    def encode(
        self, text: str, *, add_special_tokens: bool, split_special_tokens: bool
    ) -> list[int]: ...

    def convert_tokens_to_ids(self, tokens: str) -> int | None: ...

    def convert_ids_to_tokens(self, ids: int) -> str | None: ...


@dataclass(frozen=True)
class Message:
    """One message; ``role`` is system, user, assistant or ``tool: NAME``.

    An assistant message holds what the model generated, untouched: ``content`` is the
    text after the ``<think>\\n`` the prompt supplied, up to (not including) ``stop``,
    the stop token that ended it (None if generation hit its length limit).
    ``token_ids`` may keep the generated ids so that the history replays exactly what
    the model produced instead of a re-tokenization of ``content``.
    """

    role: str
    content: str
    stop: str | None = EOT
    token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        tool = self.tool_name
        if self.role not in (SYSTEM, USER, ASSISTANT) and not (tool and _TOOL_NAME.fullmatch(tool)):
            raise ValueError(f"invalid role {self.role!r}")
        if self.role == ASSISTANT:
            if self.stop is not None and self.stop not in STOP_TOKENS:
                raise ValueError(f"{self.stop!r} is not a stop token")
        elif self.stop != EOT or self.token_ids is not None:
            raise ValueError("only an assistant message has a stop token or generated ids")

    @classmethod
    def system(cls, content: str) -> Message:
        return cls(SYSTEM, content)

    @classmethod
    def user(cls, content: str) -> Message:
        return cls(USER, content)

    @classmethod
    def tool(cls, name: str, content: str) -> Message:
        return cls(TOOL_ROLE_PREFIX + name, content)

    @classmethod
    def assistant(
        cls, content: str, stop: str | None = EOT, token_ids: Sequence[int] | None = None
    ) -> Message:
        return cls(ASSISTANT, content, stop, None if token_ids is None else tuple(token_ids))

    @property
    def tool_name(self) -> str | None:
        """NAME of a ``tool: NAME`` message, else None."""
        if self.role.startswith(TOOL_ROLE_PREFIX):
            return self.role[len(TOOL_ROLE_PREFIX) :]
        return None


@dataclass(frozen=True)
class Piece:
    """A special token, or text to encode as plain text (or its already known ids)."""

    text: str
    special: bool = False
    ids: tuple[int, ...] | None = None


def _special(token: str) -> Piece:
    return Piece(token, special=True)


def _header(role: str) -> list[Piece]:
    return [_special(START_HEADER), Piece(role), _special(END_HEADER), Piece("\n\n")]


def _message_pieces(message: Message, think: bool) -> list[Piece]:
    pieces = _header(message.role)
    if message.role != ASSISTANT:
        # Tool results are kept as is; system and user bodies are stripped.
        body = message.content if message.tool_name else message.content.strip()
        return [*pieces, Piece(body), _special(EOT)]
    if think:
        pieces.append(Piece(THINK_START))
    pieces.append(Piece(message.content, ids=message.token_ids))
    if message.stop is not None:
        pieces.append(_special(message.stop))
    if message.stop != EOT:
        # CWM's environment closed a turn the model did not end with <|eot_id|>.
        pieces.append(_special(EOT))
    return pieces


def _conversation_pieces(
    messages: Sequence[Message], add_generation_prompt: bool, think: bool
) -> list[Piece]:
    pieces = [_special(BEGIN_OF_TEXT)]
    for message in messages:
        pieces += _message_pieces(message, think)
    if add_generation_prompt:
        pieces += _header(ASSISTANT)
        if think:
            pieces.append(Piece(THINK_START))
    return pieces


def encode_pieces(pieces: Sequence[Piece], tokenizer: ChatTokenizer) -> list[int]:
    ids: list[int] = []
    for piece in pieces:
        if piece.special:
            ids.append(special_token_id(tokenizer, piece.text))
        elif piece.ids is not None:
            ids += piece.ids
        elif piece.text:
            ids += tokenizer.encode(piece.text, add_special_tokens=False, split_special_tokens=True)
    return ids


def render_text(
    messages: Sequence[Message], add_generation_prompt: bool = True, think: bool = True
) -> str:
    """The conversation as CWM reads it; with ``add_generation_prompt`` it ends with
    the open assistant header (and ``<think>\\n`` in reasoning mode)."""
    return "".join(p.text for p in _conversation_pieces(messages, add_generation_prompt, think))


def render_ids(
    messages: Sequence[Message],
    tokenizer: ChatTokenizer,
    add_generation_prompt: bool = True,
    think: bool = True,
) -> list[int]:
    """Token ids of :func:`render_text`; message text never yields a special token."""
    return encode_pieces(_conversation_pieces(messages, add_generation_prompt, think), tokenizer)


def message_token_counter(
    tokenizer: ChatTokenizer, role: str, think: bool = True
) -> Callable[[str], int]:
    """Counts the tokens of one ``role`` message with a given body, header and end
    token included: the size CWM's message length limits refer to."""

    def count(body: str) -> int:
        return len(encode_pieces(_message_pieces(Message(role, body), think), tokenizer))

    return count


def special_token_id(tokenizer: ChatTokenizer, token: str) -> int:
    """Id of a special token, looked up by its string; a tokenizer without it fails
    here rather than silently encoding it as unknown."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != token:
        raise ValueError(f"the tokenizer has no token {token!r}")
    return token_id


def stop_token_ids(tokenizer: ChatTokenizer) -> tuple[int, ...]:
    """Ids of :data:`STOP_TOKENS`: generation must stop on any of them."""
    return tuple(special_token_id(tokenizer, token) for token in STOP_TOKENS)
