"""Token-budget truncation of message bodies with CWM's ``[...]`` marker (§4, §6).

The caller supplies ``count_tokens`` (e.g. :func:`chat.message_token_counter`), so this
stays independent of any tokenizer. Cuts fall between characters, never inside a
multi-byte character, and the result always counts at most ``max_tokens`` unless even
the bare marker does not fit.
"""

from __future__ import annotations

from collections.abc import Callable

TRUNCATION_MARKER = "[...]"

TokenCounter = Callable[[str], int]


def _longest_fit(limit: int, fits: Callable[[int], bool]) -> int:
    """Largest ``k`` in ``[0, limit]`` with ``fits(k)``, taking ``fits`` as monotone
    (keeping fewer characters never costs more tokens) and ``fits(0)`` as given."""
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def keep_tail(text: str, max_tokens: int, count_tokens: TokenCounter) -> str:
    """Truncate from the left: keep the longest tail that fits after the marker."""
    if count_tokens(text) <= max_tokens:
        return text
    kept = _longest_fit(
        len(text) - 1,
        lambda k: count_tokens(TRUNCATION_MARKER + text[len(text) - k :]) <= max_tokens,
    )
    return TRUNCATION_MARKER + text[len(text) - kept :]


def keep_head(text: str, max_tokens: int, count_tokens: TokenCounter) -> str:
    """Truncate from the right: keep the longest head that fits before the marker."""
    if count_tokens(text) <= max_tokens:
        return text
    kept = _longest_fit(
        len(text) - 1, lambda k: count_tokens(text[:k] + TRUNCATION_MARKER) <= max_tokens
    )
    return text[:kept] + TRUNCATION_MARKER
