"""Decode speed of the real CWM 32B architecture (random weights) on one GPU.

    python benchmarks/generation_gpu.py --dtype bf16 --batch 1 8 [--decode arena]
    python benchmarks/generation_gpu.py --dtype fp8 --batch 1 8

Random weights need no download and cost the same per token as the real ones.
Reports decode tokens/s per sequence and in aggregate, and the fraction of the
memory-bandwidth limit: weight bytes read per decode step x steps/s ÷ peak.
Greedy decoding is forced to a fixed length (`min_new_tokens`; no stop ids for the
arena) so random weights cannot stop early. `--decode` picks the path: transformers'
`generate()` with a dynamic cache (eager) or a static cache (compiled), or `arena`,
the compiled decoding `TransformersPolicy` runs on a GPU (cwm_agent/model/compiled.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from transformers import CwmConfig, CwmForCausalLM, DynamicCache

from cwm_agent.model.cache import cache_kwarg
from cwm_agent.model.compiled import CompiledDecoder, decode
from cwm_agent.model.decoding import Row

PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}  # bytes/s, SXM HBM3 / HBM3e datasheets


def build(dtype: str) -> CwmForCausalLM:
    """The default CwmConfig (64 layers, 6144 hidden, GQA 48/8, window 8192), on the GPU.

    fp8 is what `--quantization fp8` loads on Hopper: torchao's fp8 weights and
    activations with per-row scales, applied to the decoder layers' linear layers one
    layer at a time (the bf16 weights of one layer at most beside the fp8 model).
    """
    config = CwmConfig()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("meta"):
        model = CwmForCausalLM(config)
    model = model.to_empty(device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, device="cuda", generator=generator) * 0.02
                tensor.copy_(noise.to(tensor.dtype))
    rotary = model.model.rotary_emb  # its buffers are not parameters: `to_empty` left garbage
    model.model.rotary_emb = type(rotary)(config=config).to("cuda")
    if dtype == "fp8":
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
            quantize_,
        )

        for layer in model.model.layers:
            quantize_(layer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return model.eval()


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the weights hold; a torchao tensor reports its logical dtype (bf16), so
    its inner tensors (fp8 data and scales) are counted instead."""

    def stored(tensor: torch.Tensor) -> int:
        if hasattr(tensor, "__tensor_flatten__"):
            names, _ = tensor.__tensor_flatten__()
            return sum(stored(getattr(tensor, name)) for name in names)
        return tensor.numel() * tensor.element_size()

    return sum(stored(t) for t in model.parameters())


def decode_rate(model: CwmForCausalLM, batch: int, prompt: int, new: int, static: bool) -> float:
    """Decode steps per second: (time for `new` tokens - time for 1 token) / (new - 1).

    `static`: a fixed-size cache, which lets generate() compile the decode step
    (torch.compile, CUDA graphs) instead of launching ~1,000 kernels from Python.
    """
    ids = torch.randint(0, 100_000, (batch, prompt), device="cuda")
    static_cache = {"cache_implementation": "static", "max_cache_len": prompt + new + 8}

    def run(tokens: int) -> float:
        cache = static_cache if static else {cache_kwarg(model): DynamicCache(config=model.config)}
        torch.cuda.synchronize()
        started = time.perf_counter()
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=0,
            **cache,
        )
        torch.cuda.synchronize()
        return time.perf_counter() - started

    run(4)  # warm up kernels and the allocator (and compile, with a static cache)
    run(new)
    one, many = run(1), run(new)
    return (new - 1) / (many - one)


def arena_rate(model: CwmForCausalLM, batch: int, prompt: int, new: int) -> float:
    """Decode steps per second of the production path: rows prefilled into dynamic
    caches, decoded through a compiled arena (copy-in and cut-out cancel out)."""
    # One capacity for every run, so that no run compiles a shape of its own.
    decoder = CompiledDecoder(model, min_capacity=prompt + new)
    ids = torch.randint(0, 100_000, (prompt,), device="cuda")
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(
            input_ids=ids[None, :-1],
            logits_to_keep=1,
            use_cache=True,
            **{cache_kwarg(model): cache},
        )

    def run(tokens: int) -> float:
        rows = [Row(copy.deepcopy(cache), int(ids[-1]), tokens, []) for _ in range(batch)]
        torch.cuda.synchronize()
        started = time.perf_counter()
        decode(decoder, rows, [], lambda logits: logits.argmax(dim=-1))
        torch.cuda.synchronize()
        return time.perf_counter() - started

    run(4)  # compile and capture this arena's shape
    run(new)
    one, many = run(1), run(new)
    return (new - 1) / (many - one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["bf16", "fp8"], default="bf16")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=129)
    parser.add_argument("--decode", choices=["dynamic", "static", "arena"], default="dynamic")
    args = parser.parse_args()

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BANDWIDTH.items() if k in name), None)
    started = time.perf_counter()
    model = build(args.dtype)
    size = weight_bytes(model)
    print(
        f"{name}: {args.dtype} weights {size / 2**30:.1f} GiB, built in "
        f"{time.perf_counter() - started:.0f}s, torch {torch.__version__}"
    )
    rows = []
    for batch in args.batch:
        if args.decode == "arena":
            steps = arena_rate(model, batch, args.prompt, args.new)
        else:
            steps = decode_rate(model, batch, args.prompt, args.new, args.decode == "static")
        fraction = size * steps / peak if peak else None
        rows.append(
            {
                "dtype": args.dtype,
                "cache": args.decode,
                "batch": batch,
                "steps_per_s": steps,
                "aggregate_tokens_per_s": steps * batch,
                "bandwidth_fraction": fraction,
            }
        )
        print(json.dumps(rows[-1]))
    print("| dtype | cache | k | tokens/s per sequence | aggregate tokens/s | of bandwidth limit |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        fraction = f"{row['bandwidth_fraction']:.0%}" if row["bandwidth_fraction"] else "n/a"
        print(
            f"| {row['dtype']} | {row['cache']} | {row['batch']} | {row['steps_per_s']:.1f} | "
            f"{row['aggregate_tokens_per_s']:.1f} | {fraction} |"
        )


if __name__ == "__main__":
    main()
