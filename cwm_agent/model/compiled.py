"""Decode steps of one fixed shape, so that torch.compile (and CUDA graphs) can run them.

Eager decoding launches about a thousand small kernels per token from Python: on an
H100 that held the 32B model to 25% of its memory-bandwidth limit (benchmarks/RESULTS.md).
A compiled step needs inputs whose shapes and addresses stay the same from one token to
the next, which `DynamicCache`'s growing tensors are not. So for decoding, the rows'
caches are copied into an `Arena` of preallocated buffers, and copied back out when a
row stops (prefill stays eager: it is one large call, bound by compute, not launches):

- a full-attention layer holds `capacity` slots; padded index i sits in slot i;
- a sliding-window layer holds a ring of `window` slots; index i sits in slot
  i % window, so a step writes one slot instead of shifting the whole window, as
  transformers' `StaticCache` does every token.

Rows are left-padded to one shared index, as in `decoding.py`, and keep their own RoPE
positions. The step builds its masks from two tensors, the index being written and each
row's first real index, so one graph serves every step. Attention does not depend on
the order of its slots, and RoPE is applied before caching, so the ring needs no
reordering. A row that stops stays in the arena (its tokens are ignored) until the
rows still going fit one of half as many rows, where they move: on a GPU a few more
rows cost little in a step bound by reading the weights, but each still reads its
cache, which at long contexts is gigabytes.

Rows and capacity are rounded up to powers of two. Arenas are kept per capacity and
reused, fewer rows as views of the same memory, so the turns of a conversation replay
the same compiled steps; a reply that outgrows the capacity moves to an arena twice
as large.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from cwm_agent.model.cache import cache_kwarg
from cwm_agent.model.decoding import Row, Sampler, advance

# One compiled graph per arena shape; the default limit (8) would fall back to eager.
RECOMPILE_LIMIT = 64


# transformers' sdpa attention with grouped queries even when compiled (see below).
PACKED_SDPA = "cwm_packed_sdpa"
# Attention implementations that take the arena's masks: a boolean or additive mask
# per slot. Flash and flex attention bring masks and windows of their own.
ATTENTION = ("sdpa", "eager", PACKED_SDPA)


def packed_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of one new token per row without copying the KV cache.

    CWM has 6 query heads per KV head. For one query token, transformers' sdpa views
    the query heads as [kv heads, 6] rows against the cache as it is, but not under
    torch.compile, where it repeats every key and value 6 times instead: a copy of
    the whole arena per layer and step. This does the grouping in either case, and
    leaves every other call (prefill, masks per head) to transformers' sdpa.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, length, dim = query.shape
    if length != 1 or groups == 1 or (attention_mask is not None and attention_mask.shape[1] != 1):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    output = torch.nn.functional.scaled_dot_product_attention(
        query.view(batch, heads // groups, groups, dim),
        key,
        value,
        attn_mask=attention_mask,
        scale=kwargs.get("scaling"),
    )
    return output.reshape(batch, 1, heads, dim), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa)
AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)


def _bucket(n: int, least: int = 1) -> int:
    """The smallest power of two >= max(n, least)."""
    return 1 << (max(n, least) - 1).bit_length()


class Arena:
    """Fixed-shape KV buffers for `rows` conversations of up to `capacity` tokens."""

    def __init__(self, model: Any, rows: int, capacity: int) -> None:
        self.config = config = model.config
        self.rows, self.capacity = rows, capacity
        self.window = config.sliding_window
        self.sliding = [kind == "sliding_attention" for kind in config.layer_types]
        dtype, device = model.dtype, model.device
        heads = config.num_key_value_heads
        head_dim = config.head_dim

        def buffer(sliding: bool) -> torch.Tensor:
            slots = self.window if sliding else capacity
            return torch.zeros(rows, heads, slots, head_dim, dtype=dtype, device=device)

        self.keys = [buffer(sliding) for sliding in self.sliding]
        self.values = [buffer(sliding) for sliding in self.sliding]
        self.index = torch.zeros((), dtype=torch.long, device=device)  # the slot being written
        self.start = torch.zeros(rows, dtype=torch.long, device=device)  # first real index
        self.tokens = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.full_slots = torch.arange(capacity, device=device)
        self.ring_slots = torch.arange(self.window, device=device)
        for tensor in [self.index, self.full_slots, self.ring_slots, *self._per_row()]:
            torch._dynamo.mark_static_address(tensor)
        self.views: dict[int, Arena] = {rows: self}

    def _per_row(self) -> list[torch.Tensor]:
        return [*self.keys, *self.values, self.start, self.tokens]

    def view(self, rows: int) -> Arena:
        """Its first `rows` rows as an arena of their own, in the same memory. Views are
        kept, so a compiled step finds the same addresses again (CUDA graphs replay)."""
        if rows not in self.views:
            view = copy.copy(self)
            view.rows = rows
            view.keys = [keys[:rows] for keys in self.keys]
            view.values = [values[:rows] for values in self.values]
            view.start, view.tokens = self.start[:rows], self.tokens[:rows]
            for tensor in view._per_row():
                torch._dynamo.mark_static_address(tensor)
            self.views[rows] = view
        return self.views[rows]

    def load(self, caches: Sequence[DynamicCache], longest: int) -> None:
        """Copy each row's cache in, left-padded to `longest` tokens. Rows past the
        caches (rounding up the batch) hold nothing: they see only their own token."""
        for keys, values in zip(self.keys, self.values, strict=True):
            keys.zero_()  # stale values stay finite anyway; zeros make that plain
            values.zero_()
        starts = []
        for row, cache in enumerate(caches):
            starts.append(longest - cache.get_seq_length())
            for layer, held in enumerate(cache.layers):
                if not held.is_initialized:  # a one-token prompt: nothing cached yet
                    continue
                count = held.keys.shape[-2]  # a sliding layer holds only its last tokens
                slots = torch.arange(longest - count, longest, device=self.index.device)
                if self.sliding[layer]:
                    slots = slots % self.window
                self.keys[layer][row].index_copy_(1, slots, held.keys[0].to(self.keys[layer]))
                self.values[layer][row].index_copy_(1, slots, held.values[0].to(self.keys[layer]))
        self.start.copy_(torch.tensor(starts + [longest] * (self.rows - len(starts))))
        self.index.fill_(longest)

    def cut(self, row: int, end: int) -> DynamicCache:
        """Row `row`'s indices before `end` as a cache of its own, as the eager path
        leaves it (a sliding layer keeps its last window - 1 tokens)."""
        start = int(self.start[row])
        cache = DynamicCache(config=self.config)
        for layer, (own, sliding) in enumerate(zip(cache.layers, self.sliding, strict=True)):
            kept = min(end - start, self.window - 1) if sliding else end - start
            slots = torch.arange(end - kept, end, device=self.index.device)
            if sliding:
                slots = slots % self.window
            keys, values = self.keys[layer], self.values[layer]
            own.update(keys[row, None, :, slots], values[row, None, :, slots])
            if sliding:
                own.cumulative_length = end - start
        return cache

    def copy_to(self, other: Arena, slots: Sequence[int]) -> None:
        """Move rows `slots`, in that order, with the index and next tokens, into an
        arena of at least this capacity, which may share this one's memory (a view of
        fewer rows); its other rows hold nothing."""
        picked = torch.tensor(list(slots), device=self.index.device)
        count = len(picked)
        starts, tokens = self.start[picked], self.tokens[picked]  # copies, taken first
        pairs = zip([*self.keys, *self.values], [*other.keys, *other.values], strict=True)
        for mine, theirs in pairs:
            theirs[:count, :, : mine.shape[2]] = mine[picked]  # a ring keeps its slots
        other.index.copy_(self.index)
        other.start.copy_(self.index.expand(other.rows))  # an empty row sees its own token
        other.start[:count] = starts
        other.tokens.zero_()
        other.tokens[:count] = tokens

    def masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Which slots each row's next token may attend to: [rows, 1, 1, slots] each."""
        start = self.start.view(-1, 1)
        full = (self.full_slots >= start) & (self.full_slots <= self.index)
        # The index a ring slot holds: the latest one <= index that maps to it.
        held = self.index - torch.remainder(self.index - self.ring_slots, self.window)
        ring = held >= start
        return full[:, None, None, :], ring[:, None, None, :]

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *_: Any,
        **__: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The cache interface the attention layers call: store one token, see all slots."""
        slot = torch.remainder(self.index, self.window) if self.sliding[layer_idx] else self.index
        self.keys[layer_idx].index_copy_(2, slot.view(1), key_states)
        self.values[layer_idx].index_copy_(2, slot.view(1), value_states)
        return self.keys[layer_idx], self.values[layer_idx]


def forward(model: Any, arena: Arena, float_mask: bool, cache_name: str) -> torch.Tensor:
    """One decode step of every row in the arena: the logits of the next tokens."""
    full, ring = arena.masks()
    if float_mask:  # eager attention adds its mask to the scores
        full, ring = (
            torch.zeros(m.shape, dtype=model.dtype, device=m.device).masked_fill(
                ~m, torch.finfo(model.dtype).min
            )
            for m in (full, ring)
        )
    output = model(
        input_ids=arena.tokens,
        attention_mask={"full_attention": full, "sliding_attention": ring},
        position_ids=(arena.index - arena.start).view(-1, 1),
        use_cache=True,
        **{cache_name: arena},
    )
    return output.logits[:, -1, :]


class CompiledDecoder:
    """Runs decode steps through arenas, compiled once per arena shape.

    `compile=False` runs the same arenas eagerly: it checks the arena logic without
    paying for compilation, and is what tests compare against the dynamic path. An
    arena's capacity is the longest row plus `headroom` (or its longest reply, if
    less), rounded up to a power of two of at least `min_capacity`.
    """

    def __init__(
        self,
        model: Any,
        *,
        compile: bool = True,
        arenas: int = 2,
        headroom: int = 512,
        min_capacity: int = 256,
    ) -> None:
        self.model = model
        self.arenas: OrderedDict[int, Arena] = OrderedDict()  # by capacity
        self.keep = arenas  # arenas kept for reuse; each holds its rows' whole KV cache
        self.headroom = headroom  # room for new tokens when an arena is picked
        self.min_capacity = min_capacity
        self.float_mask = model.config._attn_implementation == "eager"
        self.cache_kwarg = cache_kwarg(model)
        if model.config._attn_implementation == "sdpa":
            model.set_attn_implementation(PACKED_SDPA)
        self.graphs = compile and model.device.type == "cuda"  # CUDA graphs
        self._forward: Callable[..., torch.Tensor] = forward
        if compile:
            torch._dynamo.config.recompile_limit = max(
                torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT
            )
            mode = "reduce-overhead" if self.graphs else "default"
            self._forward = torch.compile(forward, fullgraph=True, dynamic=False, mode=mode)

    def step(self, arena: Arena) -> torch.Tensor:
        """The next-token logits of every row of `arena`. With CUDA graphs, each step is
        marked as new: the last step's outputs are consumed and their memory reusable."""
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return self._forward(self.model, arena, self.float_mask, self.cache_kwarg)

    def arena(self, rows: int, tokens: int) -> Arena:
        """An arena for `rows` rows of up to `tokens` tokens. Arenas are kept per
        capacity (a new one would be captured anew) with as many rows as ever asked of
        that capacity; fewer rows are a view. The least recently used past `keep` go."""
        capacity = _bucket(tokens, self.min_capacity)
        rows = _bucket(rows)
        owner = self.arenas.pop(capacity, None)
        if owner is None or owner.rows < rows:
            owner = Arena(self.model, rows, capacity)
        self.arenas[capacity] = owner
        while len(self.arenas) > self.keep:
            self.arenas.popitem(last=False)
        return owner.view(rows)

    def grow(self, arena: Arena) -> Arena:
        """The rows of a full `arena` in one of twice its capacity."""
        bigger = self.arena(arena.rows, arena.capacity * 2)
        arena.copy_to(bigger, range(arena.rows))
        return bigger

    def shrink(self, arena: Arena, slots: Sequence[int]) -> Arena:
        """Rows `slots` of `arena` moved to the front of a view of fewer rows: rows that
        stopped would otherwise still read their whole cache at every step."""
        smaller = arena.view(_bucket(len(slots)))
        arena.copy_to(smaller, slots)
        return smaller


def decode(
    decoder: CompiledDecoder, rows: Sequence[Row], stop_ids: Sequence[int], sample: Sampler
) -> None:
    """`batch.decode` through an arena: the same contract, one compiled step per token."""
    device = decoder.model.device
    longest = max(row.cache.get_seq_length() for row in rows)
    headroom = min(max(row.max_new_tokens for row in rows), decoder.headroom)
    arena = decoder.arena(len(rows), longest + headroom)
    arena.load([row.cache for row in rows], longest)
    for row in rows:
        row.cache = None  # its copy in the arena is enough; a cut-out replaces it
    arena.tokens.zero_()
    arena.tokens[: len(rows), 0] = torch.tensor([row.pending for row in rows], device=device)
    index = longest
    live = list(enumerate(range(len(rows))))  # (arena slot, row) of the rows still going
    slots = torch.arange(len(rows), device=device)
    with torch.no_grad():
        while live:
            if index == arena.capacity:
                arena = decoder.grow(arena)
            logits = decoder.step(arena)
            index += 1
            arena.index.fill_(index)
            chosen = sample(logits[slots])
            arena.tokens[slots, 0] = chosen
            still = []
            for (slot, row), token in zip(live, chosen.tolist(), strict=True):
                if advance(rows[row], token, stop_ids):
                    rows[row].cache = arena.cut(slot, index)
                else:
                    still.append((slot, row))
            if len(still) < len(live) and still and _bucket(len(still)) < arena.rows:
                arena = decoder.shrink(arena, [slot for slot, _ in still])
                still = [(slot, row) for slot, (_, row) in enumerate(still)]
            if len(still) < len(live):  # built only when rows leave: it costs a sync
                slots = torch.tensor([slot for slot, _ in still], device=device)
            live = still
