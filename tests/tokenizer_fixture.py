"""A tiny CWM-like tokenizer, built offline, for tests and tiny random models.

Like CWM's tokenizer it is a byte-level BPE with the Llama 3 split pattern, followed by
256 special-token slots whose layout follows CWM's: the named tokens of
docs/protocol.md §1 sit at the same offsets from the end of the BPE vocabulary
(``<|eot_id|>`` is base + 9 here, 128000 + 9 in CWM) and the other slots are reserved
tokens. The ids are therefore small, not CWM's: code must look them up by string.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from cwm_agent.protocol import prompts

BASE_VOCAB_SIZE = 512
SPECIAL_SLOTS = 256
SPECIAL_TOKEN_OFFSETS = {
    "<|begin_of_text|>": 0,
    "<|end_of_text|>": 1,
    "<|pad|>": 4,
    "<|start_header_id|>": 6,
    "<|end_header_id|>": 7,
    "<|eom_id|>": 8,
    "<|eot_id|>": 9,
    "<|frame_sep|>": 100,
    "<|action_sep|>": 101,
    "<|return_sep|>": 102,
    "<|call_sep|>": 103,
    "<|line_sep|>": 104,
    "<|exception_sep|>": 105,
    "<|arg_sep|>": 106,
    "<|trace_context_start|>": 107,
}

_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_CODE = '''def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class Stack:
    def __init__(self) -> None:
        self.items: list[object] = []

    def push(self, item: object) -> None:
        self.items.append(item)

    def pop(self) -> object:
        if not self.items:
            raise IndexError("pop from empty stack")
        return self.items.pop()
'''


def _training_text() -> list[str]:
    return [
        prompts.system_prompt(prompts.environment_prompt(120, 131072, 128)),
        prompts.issue_prompt("The function returns None.", "/testbed", len, 10**9),
        prompts.testgen_prompt("The function returns None.", "/testbed", len, 10**9),
        _CODE,
        "diff --git a/src/app.py b/src/app.py\n--- a/src/app.py\n+++ b/src/app.py\n",
        "<think>\nLet me look at the repository first.\n</think>\n<tool: bash>\nls -la\n</tool>",
    ]


def build_cwm_tokenizer() -> PreTrainedTokenizerFast:
    """Train the BPE in-process (deterministic, milliseconds) and add the special slots."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BASE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_text(), trainer)
    base = backend.get_vocab_size()

    by_offset = {offset: token for token, offset in SPECIAL_TOKEN_OFFSETS.items()}
    slots = [
        by_offset.get(offset, f"<|reserved_special_token_{offset}|>")
        for offset in range(SPECIAL_SLOTS)
    ]
    backend.add_special_tokens(slots)
    assert backend.token_to_id(slots[-1]) == base + SPECIAL_SLOTS - 1

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|pad|>",
        clean_up_tokenization_spaces=False,
    )
