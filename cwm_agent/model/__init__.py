"""Policy backends behind one interface, chosen by `--model SPEC`.

- `replay:PATH` — scripted replies (`replay.py`);
- `openai:URL` — an OpenAI-compatible completions server such as vLLM (`openai_api.py`);
  `openai:URL,URL,...` — several of them, requests routed over them (`routing.py`);
- anything else — a Hugging Face model id or a local directory (`hf.py`, transformers).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from cwm_agent.model.batching import BatchingPolicy
from cwm_agent.model.policy import Completion, Policy, PolicyError
from cwm_agent.model.replay import ReplayPolicy


class ModelOptions(BaseModel):
    """Loading and sampling knobs; sampling defaults are CWM's evaluation settings."""

    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    device_map: str | None = None
    quantization: Literal["fp8", "int8", "int4"] | None = None
    attn_implementation: str | None = None
    offline: bool = False
    compile: bool | None = None  # compiled decoding; None: on a GPU only
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    greedy: bool = False
    seed: int | None = None


def load_policy(spec: str, options: ModelOptions | None = None) -> Policy:
    """The policy a `--model` value names; errors are one line for the user."""
    options = options or ModelOptions()
    kind, _, rest = spec.partition(":")
    if kind == "replay" and rest:
        return ReplayPolicy(Path(rest))
    if kind == "openai" and rest:
        from cwm_agent.model.openai_api import OpenAIPolicy
        from cwm_agent.model.routing import EndpointRouter

        sampling = {
            "temperature": 0.0 if options.greedy else options.temperature,
            "top_p": options.top_p,
            "seed": options.seed,
        }
        if "," in rest:
            return EndpointRouter(rest.split(","), **sampling)
        return OpenAIPolicy(rest, **sampling)
    if not spec.strip():
        raise PolicyError("--model is empty: give replay:PATH, openai:URL or a model id/directory")
    # Imported here: torch and transformers take seconds to import, and replay or
    # server users never need them. transformers imports torchao when installed; on a
    # CPU build of torch, torchao logs that its CUDA kernels do not load, and torch that
    # torchao uses a deprecated registration: nothing the user can act on.
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from cwm_agent.model.hf import SamplingParams, TransformersPolicy

    return TransformersPolicy(
        spec,
        dtype=options.dtype,
        device_map=options.device_map,
        quantization=options.quantization,
        attn_implementation=options.attn_implementation,
        offline=options.offline,
        compile=options.compile,
        sampling=SamplingParams(
            temperature=options.temperature,
            top_p=options.top_p,
            greedy=options.greedy,
            seed=options.seed,
        ),
    )


class PolicyPool:
    """The policies of many concurrent rollouts of one `--model` spec.

    `replay:DIR` gives each rollout its own script, `DIR/<rollout>.json`
    (`replay:FILE` suits a single rollout); an
    in-process model is loaded once and its rollouts' requests are batched; a
    server is shared as it is, since it batches concurrent requests itself.
    """

    def __init__(self, spec: str, options: ModelOptions | None = None) -> None:
        kind, _, rest = spec.partition(":")
        self.replay_dir: Path | None = None
        self.shared: Policy | None = None
        self.batching: BatchingPolicy | None = None
        if kind == "replay" and rest:
            self.replay_dir = Path(rest)
            if not self.replay_dir.is_dir():
                ReplayPolicy(self.replay_dir)  # a malformed file fails now, not mid-run
            self.name = spec
            return
        policy = load_policy(spec, options)
        self.name = policy.name
        from cwm_agent.model.openai_api import OpenAIPolicy
        from cwm_agent.model.routing import EndpointRouter

        if isinstance(policy, OpenAIPolicy | EndpointRouter):
            self.shared = policy
        else:
            self.batching = BatchingPolicy(policy)

    @contextmanager
    def rollout(self, name: str) -> Iterator[Policy]:
        """The policy of the rollout called `name` (e.g. `candidate-3`), while it runs."""
        if self.replay_dir is not None:
            folder = self.replay_dir
            yield ReplayPolicy(folder / f"{name}.json" if folder.is_dir() else folder)
        elif self.shared is not None:
            yield self.shared
        else:
            assert self.batching is not None
            policy = self.batching.rollout()
            try:
                yield policy
            finally:
                policy.close()


__all__ = [
    "Completion",
    "ModelOptions",
    "Policy",
    "PolicyError",
    "PolicyPool",
    "ReplayPolicy",
    "load_policy",
]
