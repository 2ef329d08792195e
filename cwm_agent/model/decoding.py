"""Decode k conversations as one batch, each from its own KV cache.

The k rollouts of a task diverge after their first turn, so their caches have
different lengths. Each row's cache is left-padded to the longest one (zeros,
masked out by the attention mask) and the rows are stacked; every row keeps its
real RoPE positions through `position_ids`. Left padding moves all of a row's
positions by the same amount, so the sliding-window layers, which keep the last
`window - 1` positions of the padded sequence, still hold exactly the row's own
last tokens. A row that stops leaves the batch at once, its cache cut back out
without the padding, so the others go on without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from cwm_agent.model.cache import cache_kwarg

# Given the logits of the rows still running ([rows, vocab]), the next token of each.
Sampler = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Row:
    """One conversation: its cache holds all its tokens but `pending`, the last one."""

    cache: DynamicCache | None  # None while its tokens are held in a compiled arena
    pending: int
    max_new_tokens: int
    generated: list[int]
    on_token: Callable[[int], None] | None = None  # told each new token (a stream's reply)


def decode(
    model: torch.nn.Module, rows: Sequence[Row], stop_ids: Sequence[int], sample: Sampler
) -> None:
    """Generate for every row until it samples a stop id or reaches its limit.

    Each row's `generated` receives its new ids (a final stop id included) and
    its `cache` ends holding every token but the last generated one, as after
    `generate()`, so the next turn can extend it.
    """
    lengths = [row.cache.get_seq_length() for row in rows]
    batch, longest = _merge([row.cache for row in rows], lengths)
    running = list(range(len(rows)))
    mask = torch.zeros(len(rows), longest + 1, dtype=torch.long, device=model.device)
    for index, length in enumerate(lengths):
        mask[index, longest - length :] = 1
    tokens = torch.tensor([[row.pending] for row in rows], device=model.device)
    cache = cache_kwarg(model)
    with torch.no_grad():
        while running:
            positions = torch.tensor([[lengths[i]] for i in running], device=model.device)
            logits = model(
                input_ids=tokens,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{cache: batch},
            ).logits[:, -1, :]
            chosen = sample(logits)
            keep = []
            for slot, (row_index, token) in enumerate(zip(running, chosen.tolist(), strict=True)):
                lengths[row_index] += 1
                if advance(rows[row_index], token, stop_ids):
                    rows[row_index].cache = _row(batch, slot, lengths[row_index])
                else:
                    keep.append(slot)
            if len(keep) < len(running):
                selected = torch.tensor(keep, dtype=torch.long, device=model.device)
                for layer in batch.layers:
                    layer.batch_select_indices(selected)
                mask = mask[selected]
                chosen = chosen[selected]
                running = [running[slot] for slot in keep]
            mask = torch.cat([mask, mask.new_ones(len(running), 1)], dim=1)
            tokens = chosen.view(-1, 1)


def advance(row: Row, token: int, stop_ids: Sequence[int]) -> bool:
    """Record `row`'s new token; True when the row is done (a stop id or its limit)."""
    row.generated.append(token)
    if row.on_token is not None:
        row.on_token(token)
    return token in stop_ids or len(row.generated) >= row.max_new_tokens


def _merge(caches: Sequence[DynamicCache], lengths: Sequence[int]) -> tuple[DynamicCache, int]:
    """One batched cache from per-row caches, each left-padded to the longest."""
    longest = max(lengths)
    batch = DynamicCache()
    batch.layers = [type(layer).__new__(type(layer)) for layer in caches[0].layers]
    for index, merged in enumerate(batch.layers):
        merged.__dict__.update(caches[0].layers[index].__dict__)
        width = max(cache.layers[index].keys.shape[-2] for cache in caches)
        merged.keys = torch.cat([_pad(c.layers[index].keys, width) for c in caches])
        merged.values = torch.cat([_pad(c.layers[index].values, width) for c in caches])
        if merged.is_sliding:
            merged.cumulative_length = longest
    return batch, longest


def _row(batch: DynamicCache, slot: int, length: int) -> DynamicCache:
    """Row `slot` of the batch as a cache of its own, without its padding."""
    cache = DynamicCache()
    cache.layers = []
    for layer in batch.layers:
        own = type(layer).__new__(type(layer))
        own.__dict__.update(layer.__dict__)
        kept = min(length, layer.keys.shape[-2])
        own.keys = layer.keys[slot : slot + 1, :, layer.keys.shape[-2] - kept :].clone()
        own.values = layer.values[slot : slot + 1, :, layer.values.shape[-2] - kept :].clone()
        if own.is_sliding:
            own.cumulative_length = length
        cache.layers.append(own)
    return cache


def _pad(states: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - states.shape[-2]
    if missing == 0:
        return states
    pad = states.new_zeros(*states.shape[:-2], missing, states.shape[-1])
    return torch.cat([pad, states], dim=-2)
