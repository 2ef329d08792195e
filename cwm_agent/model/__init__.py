"""Policy backends behind one interface, chosen by a `ModelSpec` (`spec.py`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cwm_agent.model.policy import Completion, Policy, PolicyError
from cwm_agent.model.replay import ReplayPolicy
from cwm_agent.model.request_batching import BatchingPolicy
from cwm_agent.model.spec import DEFAULT_MODEL, LoadConfig, ModelSpec, SamplingConfig

# Set before anything of this package imports torch or transformers (every path to
# them runs this file first): transformers imports torchao when installed; on a CPU
# build of torch, torchao logs that its CUDA kernels do not load, and torch that
# torchao uses a deprecated registration: nothing the user can act on.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)


def loading_line(spec: ModelSpec) -> str | None:
    """What a command prints, once, while a local model's weights load (which can take
    minutes); None for replays and servers, which load nothing."""
    return f"loading {spec.target} …" if spec.kind == "local" else None


def load_policy(spec: ModelSpec) -> Policy:
    """The policy `spec` names; errors are one line for the user."""
    if spec.kind == "replay":
        return ReplayPolicy(spec.path)
    if spec.kind == "openai":
        from cwm_agent.model.openai_api import OpenAIPolicy
        from cwm_agent.model.routing import EndpointRouter

        if len(spec.urls) > 1:
            return EndpointRouter(spec.urls, sampling=spec.sampling)
        return OpenAIPolicy(spec.target, sampling=spec.sampling)
    if not spec.target.strip():
        raise PolicyError("--model is empty: give replay:PATH, openai:URL or a model id/directory")
    # Imported here: torch and transformers take seconds to import, and replay or
    # server users never need them.
    from cwm_agent.model.hf import TransformersPolicy

    load = spec.load  # field by field: a renamed field or parameter is a type error here
    return TransformersPolicy(
        spec.target,
        dtype=load.dtype,
        device_map=load.device_map,
        quantization=load.quantization,
        attn_implementation=load.attn_implementation,
        offline=load.offline,
        compile=load.compile,
        sampling=spec.sampling,
    )


class PolicyPool:
    """The policies of many concurrent rollouts of one `--model` spec.

    `replay:DIR` gives each rollout its own script, `DIR/<rollout>.json`
    (`replay:FILE` suits a single rollout); an
    in-process model is loaded once and its rollouts' requests are batched; a
    server is shared as it is, since it batches concurrent requests itself.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.replay_dir: Path | None = None
        self.shared: Policy | None = None
        self.batching: BatchingPolicy | None = None
        if spec.kind == "replay":
            self.replay_dir = spec.path
            if not self.replay_dir.is_dir():
                ReplayPolicy(self.replay_dir)  # a malformed file fails now, not mid-run
            self.name = str(spec)
            return
        policy = load_policy(spec)
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
    "DEFAULT_MODEL",
    "Completion",
    "LoadConfig",
    "ModelSpec",
    "Policy",
    "PolicyError",
    "PolicyPool",
    "ReplayPolicy",
    "SamplingConfig",
    "load_policy",
]
