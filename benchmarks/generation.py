"""Per-turn generation latency with and without KV-cache reuse, over one agent conversation.

    .venv/bin/python benchmarks/generation.py [--turns 20] [--tool-tokens 40] [--new-tokens 16]
    .venv/bin/python benchmarks/generation.py --model DIR [--device-map auto] [--dtype bfloat16]

Without --model it builds a small random CWM in a temporary directory (hidden 256,
8 layers, sliding window 64, the test tokenizer; no download), so it runs anywhere in
a few minutes. Each turn appends a tool result whose output has about --tool-tokens
tokens and generates up to --new-tokens tokens greedily. The same conversation runs
in two modes, turn by turn: reusing the KV cache, and prefilling every turn from
scratch (a cache of capacity 0); the replies must be identical. Each turn's latency
is the fastest of --repeats runs (the machine may be shared). Prints a markdown
table (paste it into benchmarks/RESULTS.md with the machine it ran on) and the last
turn's latency ratio; then aggregate tokens/s of k rollouts decoded as one batch
against the same k generated one after another (--batch-sizes); then decode tokens/s
of eager against compiled decoding (--decode-sizes).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cwm_agent.model.compiled import CompiledDecoder
from cwm_agent.model.hf import PrefixCache, TransformersPolicy
from cwm_agent.model.spec import SamplingConfig
from cwm_agent.protocol import prompts
from cwm_agent.protocol.chat import Message, message_token_counter, render_ids

CONTEXT_SIZE = 131072
ISSUE = "Calling `fibonacci(0)` returns None instead of 0; negative input should raise."
OUTPUT_LINE = "-rw-r--r-- 1 root root {size:5d} Jan 1 12:{minute:02d} src/module_{index}.py\n"


@dataclass(frozen=True)
class Turn:
    context_tokens: int
    prefilled_tokens: int
    generated: tuple[int, ...]
    seconds: float


def small_random_cwm(root: Path) -> Path:
    """The benchmark model: the test model builder at a size where prefill cost shows."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_model import build_tiny_cwm_dir

    return build_tiny_cwm_dir(root / "small-cwm", hidden_size=256, layers=8, sliding_window=64)


def tool_output(policy: TransformersPolicy, turn: int, tokens: int) -> str:
    """`ls`-like text of about `tokens` tokens, different every turn."""
    lines = (OUTPUT_LINE.format(size=97 * i + turn, minute=turn % 60, index=i) for i in range(999))
    text = ""
    for line in lines:
        if len(policy.tokenizer.encode(text + line, add_special_tokens=False)) > tokens:
            break
        text += line
    return text


def opening(policy: TransformersPolicy) -> list[Message]:
    environment = prompts.environment_prompt(120, CONTEXT_SIZE, 128)
    count = message_token_counter(policy.tokenizer, "user")
    return [
        Message.system(prompts.system_prompt(environment)),
        Message.user(prompts.issue_prompt(ISSUE, "/testbed", count)),
    ]


def play_turn(
    policy: TransformersPolicy, conversation: list[Message], turn: int, args: argparse.Namespace
) -> Turn:
    """Generate one reply, then append it and the next tool result to `conversation`."""
    prefilled = policy.stats.prefilled_tokens
    started = time.perf_counter()
    (reply,) = policy.complete([conversation], args.new_tokens)
    seconds = time.perf_counter() - started
    feedback = prompts.tool_result(
        tool_output(policy, turn, args.tool_tokens),
        args.turns - turn - 1,
        CONTEXT_SIZE - reply.prompt_tokens - reply.completion_tokens,
    )
    conversation += [
        Message.assistant(reply.text, reply.stop, reply.token_ids),
        Message.tool("bash", feedback),
    ]
    generated = reply.token_ids or ()
    return Turn(reply.prompt_tokens, policy.stats.prefilled_tokens - prefilled, generated, seconds)


def run(policy: TransformersPolicy, args: argparse.Namespace) -> dict[str, list[Turn]]:
    """Both modes turn by turn, so that load from other processes hits them alike."""
    caches = {"reuse": PrefixCache(16), "scratch": PrefixCache(0)}
    conversations = {mode: opening(policy) for mode in caches}
    turns: dict[str, list[Turn]] = {mode: [] for mode in caches}
    for turn in range(args.turns):
        for mode, cache in caches.items():
            policy.kv_cache = cache
            turns[mode].append(play_turn(policy, conversations[mode], turn, args))
    return turns


def fastest(runs: list[list[Turn]]) -> list[Turn]:
    """Per turn, the repeat with the lowest latency (the least disturbed one)."""
    return [min(repeats, key=lambda turn: turn.seconds) for repeats in zip(*runs, strict=True)]


def table(reused: list[Turn], scratch: list[Turn]) -> str:
    rows = [
        "| turn | context tokens | prefilled (reuse) | ms (reuse) | prefilled (scratch) "
        "| ms (scratch) | scratch / reuse |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for number, (fast, slow) in enumerate(zip(reused, scratch, strict=True), start=1):
        rows.append(
            f"| {number} | {fast.context_tokens} | {fast.prefilled_tokens} "
            f"| {fast.seconds * 1000:.0f} | {slow.prefilled_tokens} | {slow.seconds * 1000:.0f} "
            f"| {slow.seconds / fast.seconds:.2f} |"
        )
    return "\n".join(rows)


def batch_throughput(policy: TransformersPolicy, ks: list[int], new_tokens: int) -> str:
    """Aggregate tokens/s of the first turn of k rollouts of one task (one prompt,
    prefilled once): decoded as one batch, against the same k one after another."""
    rows = ["| k | sequential tokens/s | batched tokens/s | batched / sequential |"]
    rows.append("|---:|---:|---:|---:|")
    for k in ks:
        prompts = [render_ids(opening(policy), policy.tokenizer)] * k
        rates = []
        for batched in (False, True):
            policy.kv_cache = PrefixCache(16)
            policy.generate_ids([prompts[0]], 1)  # the shared prompt is cached in both modes
            started = time.perf_counter()
            if batched:
                results = policy.generate_ids(prompts, new_tokens)
            else:
                results = [policy.generate_ids([p], new_tokens)[0] for p in prompts]
            tokens = sum(len(r.token_ids) + (r.stop is not None) for r in results)
            rates.append(tokens / (time.perf_counter() - started))
        rows.append(f"| {k} | {rates[0]:.1f} | {rates[1]:.1f} | {rates[1] / rates[0]:.2f} |")
    return "\n".join(rows)


def decode_rates(policy: TransformersPolicy, ks: list[int], new_tokens: int) -> str:
    """Decode tokens/s of k rollouts past the sliding window, eager (dynamic caches)
    against compiled (arenas): (time for `new_tokens` - time for 1) / (new_tokens - 1),
    so prefill and the cut-out of the caches are left out."""
    rows = ["| k | eager tokens/s | compiled tokens/s | compiled / eager | same tokens |"]
    rows.append("|---:|---:|---:|---:|---|")
    prompt = render_ids(opening(policy), policy.tokenizer)
    decoders = {"eager": None, "compiled": CompiledDecoder(policy.model)}
    for k in ks:
        rates, outputs = {}, {}
        for mode, decoder in decoders.items():
            policy.decoder = decoder
            policy.kv_cache = PrefixCache(16)
            policy.generate_ids([prompt] * k, 4)  # caches the prompt; compiles this shape
            seconds = []
            for tokens in (1, new_tokens):
                started = time.perf_counter()
                results = policy.generate_ids([prompt] * k, tokens)
                seconds.append(time.perf_counter() - started)
            rates[mode] = k * (new_tokens - 1) / (seconds[1] - seconds[0])
            outputs[mode] = [r.token_ids for r in results]
        same = "yes" if outputs["eager"] == outputs["compiled"] else "NO"
        rows.append(
            f"| {k} | {rates['eager']:.1f} | {rates['compiled']:.1f} "
            f"| {rates['compiled'] / rates['eager']:.2f} | {same} |"
        )
    policy.decoder = None
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a CWM directory or Hub id (default: small random CWM)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device-map")
    parser.add_argument("--quantization", choices=["fp8", "int8", "int4"])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--tool-tokens", type=int, default=40)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="report each turn's fastest")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 4, 8])
    parser.add_argument("--batch-new-tokens", type=int, default=64)
    parser.add_argument(
        "--decode-sizes", type=int, nargs="*", default=[1, 8], help="k for eager vs compiled"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        policy = TransformersPolicy(
            args.model or str(small_random_cwm(Path(root))),
            dtype=args.dtype,
            device_map=args.device_map,
            quantization=args.quantization,
            offline=args.model is None,
            sampling=SamplingConfig(greedy=True),
            compile=False,
        )
        policy.generate_ids([[0, 1, 2, 3]], 2)  # warm-up, out of the figures
        runs = [run(policy, args) for _ in range(args.repeats)]
        batches = batch_throughput(policy, args.batch_sizes, args.batch_new_tokens)
        decoding = decode_rates(policy, args.decode_sizes, args.batch_new_tokens)
    reused = fastest([r["reuse"] for r in runs])
    scratch = fastest([r["scratch"] for r in runs])

    print(
        f"model {args.model or 'small random CWM (hidden 256, 8 layers, window 64)'} "
        f"on {policy.model.device}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)\n"
    )
    print(table(reused, scratch))
    same = [t.generated for t in reused] == [t.generated for t in scratch]
    print(f"\nreplies identical with and without reuse: {'yes' if same else 'NO'}")
    print(
        f"turn {args.turns}: scratch / reuse latency = "
        f"{scratch[-1].seconds / reused[-1].seconds:.2f}\n"
    )
    print(batches)
    print()
    print(decoding)


if __name__ == "__main__":
    main()
