"""`--quantization` on the tiny CWM (tests/tiny_model.py): fp8 with torchao, int8 and int4
with bitsandbytes. The weights must really be stored quantized, take less memory, and
the policy must still generate over several turns (reusing its KV cache).

The packages come from the `quant` extra. Where one is missing these tests are skipped,
except under CI (`CI` set), where that is a failure: CI installs the extra."""

from __future__ import annotations

import importlib
import itertools
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch

from cwm_agent.model.hf import Generated, TransformersPolicy
from cwm_agent.model.policy import PolicyError
from cwm_agent.model.spec import SamplingConfig
from cwm_agent.protocol.chat import STOP_TOKENS, Message, render_ids

PACKAGE = {"fp8": "torchao", "int8": "bitsandbytes", "int4": "bitsandbytes"}
# Stored bytes of the decoder's Linear weights (scales included) over their bf16 bytes.
MAX_WEIGHT_RATIO = {"fp8": 0.55, "int8": 0.55, "int4": 0.3}
NEW_TOKENS = 8
FP8_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def require(package: str) -> None:
    try:
        importlib.import_module(package)
    except ImportError as exc:
        message = f"{package} is missing ({exc}): pip install -e '.[quant]'"
        if os.environ.get("CI"):
            pytest.fail(f"CI must test quantization: {message}")
        pytest.skip(message)


def load(tiny_cwm_dir: Path, quantization: str | None, **kwargs: object) -> TransformersPolicy:
    # bfloat16: the released CWM's dtype (the tiny checkpoint is saved in float32).
    return TransformersPolicy(
        str(tiny_cwm_dir),
        offline=True,
        dtype="bfloat16",
        quantization=quantization,  # type: ignore[arg-type]
        sampling=SamplingConfig(greedy=True),
        **kwargs,
    )


def linears(policy: TransformersPolicy) -> list[torch.nn.Linear]:
    """The decoder layers' Linear modules (the embeddings and lm_head stay unquantized)."""
    return [m for m in policy.model.model.layers.modules() if isinstance(m, torch.nn.Linear)]


def stored_bytes(tensors: Iterable[object]) -> int:
    """Bytes the tensors really hold: a torchao tensor subclass reports its logical dtype
    (bf16), so count the tensors inside it (fp8 data and scales) instead."""
    total = 0
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor):
            continue
        if hasattr(tensor, "__tensor_flatten__"):
            names, _ = tensor.__tensor_flatten__()
            total += stored_bytes(getattr(tensor, name) for name in names)
        else:
            total += tensor.nelement() * tensor.element_size()
    return total


def weight_bytes(module: torch.nn.Linear) -> int:
    """A Linear's weight with its quantization scales (bitsandbytes keeps them aside)."""
    weight = module.weight
    scales = [getattr(weight, "SCB", None)]  # int8: one float32 scale per row
    if getattr(weight, "quant_state", None) is not None:  # int4: one per 64-weight block
        scales.append(weight.quant_state.absmax)
    return stored_bytes([weight, *scales])


def assert_quantized(quantization: str, module: torch.nn.Linear) -> None:
    weight = module.weight
    if quantization == "fp8":
        from torchao.quantization import Float8Tensor

        assert isinstance(weight, Float8Tensor), type(weight)
        assert weight.qdata.dtype == torch.float8_e4m3fn
        assert weight.dtype == torch.bfloat16  # computed in bf16 ...
        assert weight.act_quant_kwargs is None  # ... with unquantized activations
    else:
        import bitsandbytes as bnb

        if quantization == "int8":
            assert isinstance(module, bnb.nn.Linear8bitLt), type(module)
            assert weight.dtype == torch.int8
        else:
            assert isinstance(module, bnb.nn.Linear4bit), type(module)
            assert weight.dtype == torch.uint8  # two 4-bit values a byte
            assert weight.quant_state.quant_type == "nf4"
            assert module.compute_dtype == torch.bfloat16


def play_two_turns(policy: TransformersPolicy) -> list[Generated]:
    conversation = [
        Message.system("You are a helpful AI assistant."),
        Message.user("The function fibonacci returns None. Fix it."),
    ]
    turns = []
    for turn in range(2):
        (generated,) = policy.generate_ids([render_ids(conversation, policy.tokenizer)], NEW_TOKENS)
        turns.append(generated)
        conversation += [
            Message.assistant(generated.text, generated.stop, generated.token_ids),
            Message.tool("bash", f"[turn {turn}]\ndef fibonacci(n): return None\n"),
        ]
    return turns


@pytest.fixture(scope="module")
def unquantized(tiny_cwm_dir: Path) -> TransformersPolicy:
    return load(tiny_cwm_dir, None)


@pytest.mark.parametrize("quantization", ["fp8", "int8", "int4"])
def test_quantized_weights_take_less_memory(
    quantization: str, tiny_cwm_dir: Path, unquantized: TransformersPolicy
) -> None:
    require(PACKAGE[quantization])
    policy = load(tiny_cwm_dir, quantization)

    quantized_linears, plain_linears = linears(policy), linears(unquantized)
    assert len(quantized_linears) == len(plain_linears) > 0
    for module in quantized_linears:
        assert_quantized(quantization, module)
    for module, plain in zip(quantized_linears, plain_linears, strict=True):
        assert weight_bytes(module) <= MAX_WEIGHT_RATIO[quantization] * weight_bytes(plain)

    model, base = policy.model, unquantized.model
    assert stored_bytes(itertools.chain(model.parameters(), model.buffers())) < stored_bytes(
        itertools.chain(base.parameters(), base.buffers())
    )
    if quantization != "fp8":  # get_memory_footprint counts torchao's tensors as bf16
        assert model.get_memory_footprint() < base.get_memory_footprint()


@pytest.mark.parametrize("quantization", ["fp8", "int8", "int4"])
def test_quantized_model_generates_over_turns(quantization: str, tiny_cwm_dir: Path) -> None:
    require(PACKAGE[quantization])
    policy = load(tiny_cwm_dir, quantization)
    vocabulary = len(policy.tokenizer)
    first, second = play_two_turns(policy)
    for generated in (first, second):
        assert generated.finish_reason in ("stop", "length")
        if generated.finish_reason == "length":
            assert len(generated.token_ids) == NEW_TOKENS and generated.stop is None
        else:
            assert len(generated.token_ids) < NEW_TOKENS and generated.stop in STOP_TOKENS
        assert all(0 <= token < vocabulary for token in generated.token_ids)
        assert generated.text == policy.tokenizer.decode(generated.token_ids)
    # The second turn continued the first's KV cache: it prefilled only what was appended.
    held = first.prompt_tokens + len(first.token_ids) + (first.stop is not None) - 1
    assert second.prefilled_tokens == second.prompt_tokens - held


@pytest.mark.skipif(not FP8_GPU, reason="needs a CUDA GPU with fp8 tensor cores (sm >= 8.9)")
def test_fp8_on_hopper_quantizes_activations_too(tiny_cwm_dir: Path) -> None:
    require("torchao")
    policy = load(tiny_cwm_dir, "fp8", device_map="cuda")
    for module in linears(policy):
        assert module.weight.qdata.dtype == torch.float8_e4m3fn
        assert module.weight.qdata.is_cuda
        assert module.weight.act_quant_kwargs is not None
    first, second = play_two_turns(policy)
    assert first.finish_reason in ("stop", "length")
    assert second.finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("quantization", "package"),
    [("fp8", "torchao"), ("int8", "bitsandbytes"), ("int4", "bitsandbytes")],
)
def test_missing_package_says_what_to_install(
    quantization: str, package: str, tiny_cwm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError
    with pytest.raises(PolicyError) as raised:
        load(tiny_cwm_dir, quantization)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{quantization} quantization needs {package} ")
    assert message.endswith("pip install 'cwm-agent[quant]'")
