"""Local CWM inference with Hugging Face transformers, reusing the KV cache across turns.

An agent conversation is append-only (docs/protocol.md §1): turn N+1's prompt is turn
N's prompt, the reply and its stop token, then the new tool result. Prefilling the
whole conversation again every turn would make a 100-turn episode quadratic, so the
policy keeps a small LRU of KV caches (`PrefixCache`) keyed by the token ids each
holds and prefills only what the longest cached prefix lacks.

CWM mixes full-attention layers with sliding-window layers. transformers'
`DynamicCache` keeps only the last window of a sliding layer, so a cache cannot be
cropped back once past the window: an entry can only be extended, never shortened.
Hence two kinds of entries:

- a conversation *tip* (the state after a reply) is moved out of the LRU and extended
  in place by the next turn: no copy on the common path;
- a *prompt snapshot* (the state just before the last token of a prompt that did not
  continue a tip: a new task, a new branch) is kept and deep-copied by every prompt
  that starts with it, so k rollouts of one task prefill its system and user prompt
  once.

Reuse computes the same function as a full prefill, in other chunks: in float32 the
logits agree to ~1e-6 and greedy replies are identical (tested); in bfloat16 they
differ by rounding (one bf16 ulp measured on an H100), which can flip near-ties.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    GenerationConfig,
    PreTrainedConfig,
)
from transformers.utils import logging as transformers_logging

from cwm_agent.errors import first_line
from cwm_agent.model import compiled
from cwm_agent.model.cache import cache_kwarg
from cwm_agent.model.decoding import Row, Sampler, decode
from cwm_agent.model.policy import (
    Completion,
    FinishReason,
    PolicyError,
    TokenLimit,
    per_conversation,
)
from cwm_agent.model.spec import Quantization, SamplingConfig
from cwm_agent.protocol.chat import Message, render_ids, stop_token_ids

QUANTIZATIONS: tuple[Quantization, ...] = ("fp8", "int8", "int4")
DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float32": torch.float32}
CWM_MODEL_TYPE = "cwm"


@dataclass(frozen=True)
class Generated:
    """One continuation of a token-id prompt."""

    token_ids: tuple[int, ...]  # generated ids without the stop token
    text: str  # decoded token_ids; special-token text the model wrote stays
    finish_reason: FinishReason
    stop: str | None  # the stop token that ended it; None at the length limit
    prompt_tokens: int
    prefilled_tokens: int  # prompt tokens run through the model (the rest came from a cache)
    duration_s: float


@dataclass
class GenerationStats:
    """Running totals since the policy was built, for benchmarks and tests."""

    prompts: int = 0
    prompt_tokens: int = 0
    prefilled_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    snapshots: int = 0


@dataclass
class _Entry:
    ids: tuple[int, ...]  # exactly the tokens the cache holds
    cache: DynamicCache
    shared: bool  # a prompt snapshot: copied for each user, never extended in place


@dataclass
class Reuse:
    """A cache to extend, holding the first `length` ids of the prompt it was found for."""

    cache: DynamicCache
    length: int
    from_tip: bool  # the cache continues a conversation tip (not a copied snapshot)


class PrefixCache:
    """LRU of KV caches, each with the exact token ids it holds; capacity 0 disables reuse.

    Two conversations may hold equal ids (the same reply to the same prompt), so the
    entries are not keyed by ids: each conversation keeps its own tip.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, not {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._keys = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, prompt: tuple[int, ...]) -> Reuse | None:
        """The cache of the longest entry that is a strict prefix of `prompt` (at least
        one prompt token must be left to run). A tip leaves the LRU: the caller extends
        it and puts it back with its new ids. A snapshot stays and is copied."""
        matches = [
            key
            for key, entry in self._entries.items()
            if len(entry.ids) < len(prompt) and prompt[: len(entry.ids)] == entry.ids
        ]
        if not matches:
            return None
        key = max(matches, key=lambda key: len(self._entries[key].ids))
        entry = self._entries[key]
        if entry.shared:
            self._entries.move_to_end(key)
            return Reuse(copy.deepcopy(entry.cache), len(entry.ids), from_tip=False)
        del self._entries[key]
        return Reuse(entry.cache, len(entry.ids), from_tip=True)

    def put(self, ids: tuple[int, ...], cache: DynamicCache, *, shared: bool) -> None:
        if self.capacity == 0:
            return
        self._entries[next(self._keys)] = _Entry(ids, cache, shared)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class TransformersPolicy:
    """CWM run in-process with transformers (implements `cwm_agent.model.policy.Policy`).

    `model` is a Hub id (e.g. ``facebook/cwm``) or a local directory. `cache_entries`
    bounds the KV caches kept for reuse; each can be as large as one conversation's
    KV cache, on the model's device. Without `device_map` the model goes to the GPUs
    when there are any (accelerate's "auto"), else to the CPU. `compile` decodes with
    a compiled step over fixed-shape buffers (`compiled.py`); by default it is on for
    a model on one GPU, where eager decoding is bound by kernel launches, unless
    bitsandbytes quantized it (not compileable); off on a CPU, where the first step
    of each new shape would cost tens of seconds of compilation. It needs sdpa or eager
    attention and the model on one device (the arena holds every layer on one).
    """

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        device_map: str | None = None,
        quantization: Quantization | None = None,
        attn_implementation: str | None = None,
        offline: bool = False,
        sampling: SamplingConfig = SamplingConfig(),
        cache_entries: int = 16,
        compile: bool | None = None,
    ) -> None:
        if dtype not in DTYPES:
            raise PolicyError(f"dtype {dtype!r} is not supported: use one of {', '.join(DTYPES)}")
        if device_map is None and torch.cuda.is_available():
            device_map = "auto"  # a GPU machine means the GPU, not the CPU
        quantization_config = _quantization_config(quantization, device_map)
        self.name = model
        self.sampling = sampling
        self.kv_cache = PrefixCache(cache_entries)
        self.stats = GenerationStats()
        self._lock = threading.Lock()
        source = os.path.expanduser(model)
        config = _load_config(source, offline)
        self.tokenizer = load_tokenizer(source, offline)
        try:
            self._stop_ids = stop_token_ids(self.tokenizer)
        except ValueError as exc:
            raise PolicyError(f"{model}: {exc}; it is not CWM's tokenizer") from exc
        self.model = _load_model(
            source,
            config,
            offline,
            dtype=DTYPES[dtype],
            device_map=device_map,
            quantization_config=quantization_config,
            attn_implementation=attn_implementation,
        )
        # Sampling comes from SamplingConfig only, never from the checkpoint's defaults.
        self.model.generation_config = GenerationConfig()
        devices = set(getattr(self.model, "hf_device_map", {"": self.model.device}).values())
        attention = self.model.config._attn_implementation
        if compile and len(devices) > 1:
            raise PolicyError(
                f"compiled decoding needs the model on one device, not {len(devices)} "
                "(--device-map): drop --compile, or quantize it to fit one GPU"
            )
        if compile and attention not in compiled.ATTENTION:
            raise PolicyError(
                f"compiled decoding works with sdpa or eager attention, not {attention}: "
                "drop --compile or --attn-implementation"
            )
        if compile is None:
            quantizer = getattr(self.model, "hf_quantizer", None)
            compile = (
                self.model.device.type == "cuda"
                and len(devices) == 1
                and attention in compiled.ATTENTION
                and (quantizer is None or quantizer.is_compileable)  # bitsandbytes is not
            )
        self.decoder = compiled.CompiledDecoder(self.model) if compile else None

    def complete(
        self, conversations: Sequence[Sequence[Message]], max_new_tokens: TokenLimit
    ) -> list[Completion]:
        prompts = [render_ids(conversation, self.tokenizer) for conversation in conversations]
        return [_completion(g) for g in self.generate_ids(prompts, max_new_tokens)]

    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: TokenLimit,
        sampling: SamplingConfig | None = None,
        stop_ids: Sequence[int] | None = None,
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[Generated]:
        """Continue each prompt until a stop token (CWM's chat stop tokens unless
        `stop_ids` names others, e.g. `<|frame_sep|>` for traces) or `max_new_tokens`.

        Eagerly, one prompt runs through `generate()`; several are decoded as one batch,
        each from its own cache and leaving the batch when it stops (`decoding.py`).
        Compiled, every call decodes through an arena (`compiled.py`). `on_token(i, id)`
        is told each token of prompt i as it is sampled (a server streaming its reply; it
        runs the batch path, one prompt too). Calls from several threads are serialised:
        they share one model and one set of caches.
        """
        limits = per_conversation(max_new_tokens, len(prompts))
        if min(limits, default=1) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {min(limits)}")
        sampling = sampling or self.sampling
        stops = tuple(stop_ids or self._stop_ids)
        with self._lock:
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            if len(prompts) > 1 or self.decoder is not None or on_token is not None:
                return self._generate_batch(
                    [tuple(p) for p in prompts], limits, sampling, stops, on_token
                )
            return [
                self._generate_one(tuple(p), self._generation_config(limit, sampling, stops), stops)
                for p, limit in zip(prompts, limits, strict=True)
            ]

    def _generate_batch(
        self,
        prompts: list[tuple[int, ...]],
        limits: list[int],
        sampling: SamplingConfig,
        stops: tuple[int, ...],
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[Generated]:
        if not all(prompts):
            raise ValueError("cannot continue an empty prompt")
        started = time.monotonic()
        rows, reused = [], []
        for index, (prompt, limit) in enumerate(zip(prompts, limits, strict=True)):
            row, held = self._row(prompt, limit)
            if on_token is not None:
                row.on_token = functools.partial(on_token, index)
            rows.append(row)
            reused.append(held)
        if self.decoder is not None:
            compiled.decode(self.decoder, rows, stops, _sampler(sampling))
        else:
            decode(self.model, rows, stops, _sampler(sampling))
        duration = time.monotonic() - started
        results = []
        for prompt, row, held in zip(prompts, rows, reused, strict=True):
            self.kv_cache.put(prompt + tuple(row.generated[:-1]), row.cache, shared=False)
            results.append(self._generated(prompt, row.generated, held, duration, stops))
        return results

    def _row(self, prompt: tuple[int, ...], limit: int) -> tuple[Row, int]:
        """`prompt` as a row to decode: its cache, prefilled up to its last token, and
        how many of its tokens were found cached."""
        cache, held = self._cache_for(prompt)
        if cache.get_seq_length() < len(prompt) - 1:
            self._prefill(cache, prompt[cache.get_seq_length() : -1])
        return Row(cache, prompt[-1], limit, []), held

    def _generation_config(
        self, max_new_tokens: int, sampling: SamplingConfig, stops: tuple[int, ...]
    ) -> GenerationConfig:
        common: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "eos_token_id": list(stops),
            "pad_token_id": self._stop_ids[0],
        }
        if sampling.is_greedy:
            return GenerationConfig(do_sample=False, **common)
        # top_k=0: transformers would otherwise apply its default top-k of 50.
        return GenerationConfig(
            do_sample=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,
            **common,
        )

    def _generate_one(
        self, prompt: tuple[int, ...], config: GenerationConfig, stops: tuple[int, ...]
    ) -> Generated:
        if not prompt:
            raise ValueError("cannot continue an empty prompt")
        started = time.monotonic()
        cache, reused = self._cache_for(prompt)
        ids = torch.tensor([prompt], device=self.model.device)
        with torch.no_grad():
            output = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                generation_config=config,
                **{cache_kwarg(self.model): cache},
            )[0].tolist()
        # The cache lacks the last sampled token: it was never fed back.
        self.kv_cache.put(tuple(output[: cache.get_seq_length()]), cache, shared=False)
        duration = time.monotonic() - started
        return self._generated(prompt, output[len(prompt) :], reused, duration, stops)

    def _cache_for(self, prompt: tuple[int, ...]) -> tuple[DynamicCache, int]:
        """The cache to extend, and how many prompt ids it held when found. A prompt
        that does not continue a tip starts a task or a branch: its state before the
        last token is kept as a snapshot for the conversations that will share it."""
        reuse = self.kv_cache.take(prompt)
        if reuse and reuse.from_tip:
            return reuse.cache, reuse.length
        cache, reused = (reuse.cache, reuse.length) if reuse else (self._new_cache(), 0)
        if self.kv_cache.capacity and len(prompt) - 1 > reused:
            self._prefill(cache, prompt[reused:-1])
            self.kv_cache.put(prompt[:-1], copy.deepcopy(cache), shared=True)
            self.stats.snapshots += 1
        return cache, reused

    def _new_cache(self) -> DynamicCache:
        """Per-layer full or sliding-window KV layers, as the model's `layer_types` say."""
        return DynamicCache(config=self.model.config)

    def _prefill(self, cache: DynamicCache, ids: Sequence[int]) -> None:
        """Run `ids` into `cache`; positions follow from the cache length."""
        with torch.no_grad():
            self.model(
                input_ids=torch.tensor([ids], device=self.model.device),
                use_cache=True,
                logits_to_keep=1,
                **{cache_kwarg(self.model): cache},
            )

    def _generated(
        self,
        prompt: tuple[int, ...],
        new: list[int],
        reused: int,
        duration_s: float,
        stops: tuple[int, ...],
    ) -> Generated:
        stopped = bool(new) and new[-1] in stops
        token_ids = tuple(new[:-1] if stopped else new)
        self.stats.prompts += 1
        self.stats.prompt_tokens += len(prompt)
        self.stats.prefilled_tokens += len(prompt) - reused
        self.stats.reused_tokens += reused
        self.stats.generated_tokens += len(new)
        return Generated(
            token_ids=token_ids,
            text=self.tokenizer.decode(
                list(token_ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
            ),
            finish_reason="stop" if stopped else "length",
            stop=self.tokenizer.convert_ids_to_tokens(new[-1]) if stopped else None,
            prompt_tokens=len(prompt),
            prefilled_tokens=len(prompt) - reused,
            duration_s=duration_s,
        )


def _sampler(sampling: SamplingConfig) -> Sampler:
    """Next tokens for a batch of logits: argmax, or temperature and nucleus (top-p)."""
    if sampling.is_greedy:
        return lambda logits: logits.argmax(dim=-1)

    def sample(logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
        ordered, order = probs.sort(dim=-1, descending=True)
        ordered[ordered.cumsum(dim=-1) - ordered > sampling.top_p] = 0
        picked = torch.multinomial(ordered / ordered.sum(dim=-1, keepdim=True), 1)
        return order.gather(-1, picked).squeeze(-1)

    return sample


def _completion(generated: Generated) -> Completion:
    return Completion(
        text=generated.text,
        prompt_tokens=generated.prompt_tokens,
        completion_tokens=len(generated.token_ids) + (generated.stop is not None),
        finish_reason=generated.finish_reason,
        stop=generated.stop,
        duration_s=generated.duration_s,
        token_ids=generated.token_ids,
    )


def _looks_like_path(model: str) -> bool:
    """True for what can only be a directory: Hub ids are NAME or OWNER/NAME."""
    return model.startswith((".", "~", os.sep)) or model.count("/") > 1 or Path(model).exists()


def _how_to_get(model: str) -> str:
    if _looks_like_path(model):
        return "pass a directory holding a CWM checkpoint (config.json, weights, tokenizer)"
    return f"download it with `hf download {model}` or pass a local directory"


@contextmanager
def _quiet_hub() -> Iterator[None]:
    """The Hub client logs every retry; the user gets our one line instead."""
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _load_config(model: str, offline: bool) -> PreTrainedConfig:
    path = Path(model)
    if _looks_like_path(model) and not path.is_dir():
        problem = "is not a directory" if path.exists() else "not found"
        raise PolicyError(f"model directory {model} {problem}: {_how_to_get(model)}")
    if path.is_dir() and not (path / "config.json").is_file():
        raise PolicyError(
            f"{model} is not a Hugging Face model directory (no config.json): {_how_to_get(model)}"
        )
    try:
        with _quiet_hub():
            config = AutoConfig.from_pretrained(model, local_files_only=offline)
    except Exception as exc:
        where = "in the local Hugging Face cache" if offline else "on the Hugging Face Hub"
        raise PolicyError(
            f"model {model} not found {where} ({first_line(exc)}): {_how_to_get(model)}"
        ) from exc
    if config.model_type != CWM_MODEL_TYPE:
        raise PolicyError(
            f"{model} is a {config.model_type!r} model, not CWM (model_type 'cwm', "
            "CwmForCausalLM): pass facebook/cwm or a directory holding it"
        )
    return config


def load_tokenizer(model: str, offline: bool) -> Any:
    """CWM's tokenizer from a Hub id or directory; failures are one PolicyError line."""
    try:
        return AutoTokenizer.from_pretrained(model, local_files_only=offline)
    except Exception as exc:
        raise PolicyError(
            f"cannot load the tokenizer of {model} ({first_line(exc)}): {_how_to_get(model)}"
        ) from exc


def _load_model(model: str, config: PreTrainedConfig, offline: bool, **kwargs: Any) -> Any:
    # transformers draws a progress bar over the weights it loads: in a CI log or under
    # --quiet that is noise, and the commands say in one line that the weights load.
    transformers_logging.disable_progress_bar()
    try:
        return AutoModelForCausalLM.from_pretrained(
            model, config=config, local_files_only=offline, **kwargs
        )
    except Exception as exc:
        raise PolicyError(f"cannot load the weights of {model}: {first_line(exc)}") from exc


def _quantization_config(quantization: Quantization | None, device_map: str | None = None) -> Any:
    """transformers' config for on-the-fly quantization at load time; imported lazily.

    fp8 uses torchao rather than transformers' FineGrainedFP8Config, which needs a GPU
    and fetches its kernels from the Hub at run time (so fails offline). On a CUDA GPU
    with fp8 tensor cores (compute capability >= 8.9: Ada, Hopper) weights and
    activations are fp8 (per-row scales, torch._scaled_mm); elsewhere only the weights
    are stored in fp8 and matmuls run in the activation dtype. int8 and int4 (nf4,
    bf16 compute) use bitsandbytes. Each needs `pip install 'cwm-agent[quant]'`.
    """
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise PolicyError(
            f"quantization {quantization!r} is not supported: use one of {', '.join(QUANTIZATIONS)}"
        )
    if quantization == "fp8":
        try:
            import torchao  # noqa: F401
            from torchao.quantization import (
                Float8DynamicActivationFloat8WeightConfig,
                Float8WeightOnlyConfig,
                PerRow,
            )
        except ImportError as exc:
            raise PolicyError(
                f"fp8 quantization needs torchao ({first_line(exc)}): "
                "pip install 'cwm-agent[quant]'"
            ) from exc
        from transformers import TorchAoConfig

        fp8_tensor_cores = (
            device_map not in (None, "cpu")
            and torch.cuda.is_available()
            and all(
                torch.cuda.get_device_capability(i) >= (8, 9)
                for i in range(torch.cuda.device_count())
            )
        )
        if fp8_tensor_cores:
            return TorchAoConfig(Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        return TorchAoConfig(Float8WeightOnlyConfig())
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise PolicyError(
            f"{quantization} quantization needs bitsandbytes ({first_line(exc)}): "
            "pip install 'cwm-agent[quant]'"
        ) from exc
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        # LLM.int8 casts bf16 inputs to fp16; bitsandbytes logs that on every matmul.
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
