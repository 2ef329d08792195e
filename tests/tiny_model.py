"""A tiny randomly initialised CWM checkpoint, built offline, for tests and benchmarks.

It has CWM's architecture (`CwmForCausalLM`: full-attention layers mixed with
sliding-window layers) and the fixture tokenizer, so `TransformersPolicy` loads it
exactly like the released model. The window is tiny (16 tokens by default) so that
short test conversations already run past it, where KV-cache reuse is hardest.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizer_fixture import build_cwm_tokenizer
from transformers import CwmConfig, CwmForCausalLM

from cwm_agent.protocol.chat import BEGIN_OF_TEXT, special_token_id, stop_token_ids

LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})


def build_tiny_cwm_dir(
    path: Path,
    *,
    hidden_size: int = 64,
    layers: int = 4,
    sliding_window: int = 16,
    seed: int = 0,
) -> Path:
    """Save a random CWM of the given size with the fixture tokenizer into `path`."""
    tokenizer = build_cwm_tokenizer()
    heads = 4
    config = CwmConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        head_dim=hidden_size // heads,
        sliding_window=sliding_window,
        max_position_embeddings=16384,
        bos_token_id=special_token_id(tokenizer, BEGIN_OF_TEXT),
        eos_token_id=list(stop_token_ids(tokenizer)),
        pad_token_id=tokenizer.pad_token_id,
    )
    if set(config.layer_types) != LAYER_TYPES:
        raise ValueError(f"{layers} layers give only {set(config.layer_types)}: use at least 2")
    torch.manual_seed(seed)
    CwmForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
