"""Token counts with the policy's tokenizer, or a documented estimate without one.

The estimate is one token per 4 bytes of UTF-8, rounded up (about what Llama-3
style BPE vocabularies such as CWM's give on English and code). It is used only
when a policy has no tokenizer (`replay:`, servers that hide theirs).
"""

from __future__ import annotations

from collections.abc import Callable

from cwm_agent.protocol.chat import (
    BEGIN_OF_TEXT,
    ChatTokenizer,
    Message,
    message_token_counter,
    render_ids,
    render_text,
)

BYTES_PER_TOKEN = 4
_HEADER_TOKENS = 5  # <|start_header_id|> ROLE <|end_header_id|> \n\n ... <|eot_id|>


def estimate_tokens(text: str) -> int:
    return -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN)


def message_counter(tokenizer: ChatTokenizer | None, role: str) -> Callable[[str], int]:
    """Tokens of one `role` message with a given body, header and end token included."""
    if tokenizer is not None:
        return message_token_counter(tokenizer, role)
    return lambda body: estimate_tokens(body) + _HEADER_TOKENS


def conversation_tokens(tokenizer: ChatTokenizer | None, messages: list[Message]) -> int:
    """Tokens of the whole prompt, generation prompt included."""
    if tokenizer is not None:
        return len(render_ids(messages, tokenizer))
    return estimate_tokens(render_text(messages))


def generation_prompt_tokens(tokenizer: ChatTokenizer | None) -> int:
    """Tokens of the assistant header and `<think>\n` that reopen the model's turn."""
    if tokenizer is not None:
        return len(render_ids([], tokenizer)) - 1  # all but <|begin_of_text|>
    return estimate_tokens(render_text([]).removeprefix(BEGIN_OF_TEXT))
