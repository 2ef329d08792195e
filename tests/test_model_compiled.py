"""Compiled decoding (cwm_agent/model/compiled.py) on the tiny random CWM: the arena
path must generate exactly what the eager dynamic-cache path generates, across turns,
rollouts of different lengths, rows that stop early, the sliding window and growth."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_model_hf import GREEDY, step_together, task
from transformers import DynamicCache

from cwm_agent.model.cache import cache_kwarg
from cwm_agent.model.compiled import CompiledDecoder, packed_sdpa
from cwm_agent.model.compiled import decode as decode_compiled
from cwm_agent.model.decoding import Row, decode
from cwm_agent.model.hf import Generated, TransformersPolicy
from cwm_agent.model.policy import PolicyError
from cwm_agent.protocol.chat import render_ids

LIMITS = [16, 5, 11]  # rows leave the batch at different steps


def rollouts(policy: TransformersPolicy, turns: int) -> list[list[Generated]]:
    return step_together(policy, turns, LIMITS)[0]


def policy(
    tiny_cwm_dir: Path, decoder: dict[str, int | bool] | None, attention: str = "sdpa"
) -> TransformersPolicy:
    loaded = TransformersPolicy(
        str(tiny_cwm_dir),
        offline=True,
        sampling=GREEDY,
        compile=False,
        attn_implementation=attention,
    )
    if decoder is not None:
        loaded.decoder = CompiledDecoder(loaded.model, **decoder)  # type: ignore[arg-type]
    return loaded


@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # boolean and additive masks
def test_arena_decoding_generates_what_eager_decoding_generates(
    tiny_cwm_dir: Path, attention: str
) -> None:
    """Uncompiled arenas against the dynamic cache: the same tokens and the same
    prefill counts (each turn extends the cache cut out of the arena last turn)."""
    eager = rollouts(policy(tiny_cwm_dir, None, attention), 4)
    arena_policy = policy(tiny_cwm_dir, {"compile": False}, attention)
    arenas = rollouts(arena_policy, 4)
    assert [[g.token_ids for g in turn] for turn in arenas] == [
        [g.token_ids for g in turn] for turn in eager
    ]
    assert [[g.prefilled_tokens for g in turn] for turn in arenas] == [
        [g.prefilled_tokens for g in turn] for turn in eager
    ]
    assert min(g.prompt_tokens for g in arenas[-1]) > 300  # the sliding window is 16
    assert [len(g.token_ids) for g in arenas[0]] == LIMITS  # random weights never stop
    # 3 rows rounded up to 4; the first to stop leaves 2 rows, then 1: views of the 4
    assert arena_policy.decoder is not None
    last = list(arena_policy.decoder.arenas.values())[-1]
    assert sorted(last.views) == [1, 2, 4]


def test_an_arena_grows_when_replies_outgrow_it(tiny_cwm_dir: Path) -> None:
    """Two rows of 14 and 9 cached tokens in an arena of 16 slots: it moves to 32, then
    64; the short row stops after 20 tokens, the other goes on alone in an arena of one
    row up to 40, each with the tokens and the cache of the dynamic path."""
    loaded = policy(tiny_cwm_dir, None)
    prompt = render_ids(task(), loaded.tokenizer)

    def rows() -> list[Row]:
        made = []
        for length, limit in [(15, 40), (10, 20)]:
            cache = DynamicCache(config=loaded.model.config)
            ids = torch.tensor([prompt[: length - 1]])
            loaded.model(input_ids=ids, **{cache_kwarg(loaded.model): cache})
            made.append(Row(cache, prompt[length - 1], limit, []))
        return made

    def greedy(logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=-1)

    expected, grown = rows(), rows()
    with torch.no_grad():
        decode(loaded.model, expected, [], greedy)
    decoder = CompiledDecoder(loaded.model, compile=False, headroom=1, min_capacity=16)
    decode_compiled(decoder, grown, [], greedy)
    # 16 slots, then 32, then 64 (the last two kept); the long row alone after 20 tokens
    assert list(decoder.arenas) == [32, 64]
    assert sorted(decoder.arenas[64].views) == [1, 2]
    for ours, theirs in zip(grown, expected, strict=True):
        assert ours.generated == theirs.generated
        assert ours.cache.get_seq_length() == theirs.cache.get_seq_length()
        for mine, reference in zip(ours.cache.layers, theirs.cache.layers, strict=True):
            torch.testing.assert_close(mine.keys, reference.keys)
            torch.testing.assert_close(mine.values, reference.values)
    assert [len(row.generated) for row in grown] == [40, 20]
    assert [row.cache.get_seq_length() for row in grown] == [14 + 40, 9 + 20]


def test_compiled_decoding_matches_and_compiles_once_per_arena_shape(tiny_cwm_dir: Path) -> None:
    """torch.compile on the CPU: the same tokens as eager decoding, and one compiled
    graph per arena shape however many turns replay it."""
    torch._dynamo.reset()
    eager = rollouts(policy(tiny_cwm_dir, None), 3)
    compiled_policy = TransformersPolicy(
        str(tiny_cwm_dir), offline=True, sampling=GREEDY, compile=True
    )
    assert compiled_policy.decoder is not None
    compiled_policy.decoder.keep = 16  # keep every arena, to count the shapes used
    played = []
    for turns in (1, 2, 3):  # replay from the start: later turns reuse the arenas
        played = rollouts(compiled_policy, turns)
    assert [[g.token_ids for g in turn] for turn in played] == [
        [g.token_ids for g in turn] for turn in eager
    ]
    shapes = {
        (rows, capacity)
        for capacity, arena in compiled_policy.decoder.arenas.items()
        for rows in arena.views
    }
    assert {rows for rows, _ in shapes} == {4, 2, 1}  # rows that stop leave
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs == len(shapes), (graphs, shapes)


def test_a_one_token_prompt_decodes_from_an_empty_cache(tiny_cwm_dir: Path) -> None:
    eager, arena = policy(tiny_cwm_dir, None), policy(tiny_cwm_dir, {"compile": False})
    (expected,), (got,) = (p.generate_ids([[7]], 6) for p in (eager, arena))
    assert got.token_ids == expected.token_ids and len(got.token_ids) == 6


@pytest.mark.parametrize("decoder", [None, {"compile": False}])  # eager batch, arena
def test_each_token_is_told_as_it_is_sampled(
    tiny_cwm_dir: Path, decoder: dict[str, int | bool] | None
) -> None:
    """`on_token` (a server's stream) hears every row's tokens in order, one prompt too."""
    loaded = policy(tiny_cwm_dir, decoder)
    prompts = [render_ids(task(user), loaded.tokenizer) for user in ("Fix it.", "Why?", "Go")]

    def heard(batch: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
        told: list[list[int]] = [[] for _ in batch]
        limits = LIMITS[: len(batch)]
        generated = loaded.generate_ids(batch, limits, on_token=lambda i, t: told[i].append(t))
        return told, [list(g.token_ids) for g in generated]

    for batch in (prompts, prompts[:1]):
        told, generated = heard(batch)
        assert told == generated  # random weights never sample a stop token
        assert [len(t) for t in told] == LIMITS[: len(batch)]


@pytest.mark.parametrize("compile", [True, False])
def test_compile_option_picks_the_decoder(tiny_cwm_dir: Path, compile: bool) -> None:
    loaded = TransformersPolicy(str(tiny_cwm_dir), offline=True, compile=compile)
    assert (loaded.decoder is not None) == compile
    default = TransformersPolicy(str(tiny_cwm_dir), offline=True)
    assert default.decoder is None  # the CPU: compiling would cost more than it saves


def test_packed_attention_equals_attention_over_repeated_heads(tiny_cwm_dir: Path) -> None:
    """One query token per row, 2 query heads per KV head, a padding mask: the grouped
    computation equals attention over keys and values repeated for every query head."""
    attention = policy(tiny_cwm_dir, None).model.model.layers[0].self_attn
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(3, 4, 1, 16, generator=generator)
    key, value = (torch.randn(3, 2, 10, 16, generator=generator) for _ in range(2))
    mask = torch.arange(10) >= torch.tensor([0, 3, 9]).view(3, 1, 1, 1)
    output, _ = packed_sdpa(attention, query, key, value, mask, scaling=attention.scaling)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query,
        key.repeat_interleave(2, dim=1),
        value.repeat_interleave(2, dim=1),
        attn_mask=mask,
        scale=attention.scaling,
    )
    torch.testing.assert_close(output, expected.transpose(1, 2))


def test_compiled_decoding_refuses_attention_it_cannot_mask(tiny_cwm_dir: Path) -> None:
    with pytest.raises(PolicyError, match="sdpa or eager attention, not flex_attention"):
        TransformersPolicy(
            str(tiny_cwm_dir), offline=True, compile=True, attn_implementation="flex_attention"
        )
