"""Policy backends behind one interface, chosen by `--model SPEC`.

- `replay:PATH` — scripted replies (`replay.py`);
- `openai:URL` — an OpenAI-compatible completions server (vLLM, SGLang);
- anything else — a Hugging Face model id or a local directory (transformers).
"""

from __future__ import annotations

from pathlib import Path

from cwm_agent.model.policy import Completion, Policy, PolicyError
from cwm_agent.model.replay import ReplayPolicy


def load_policy(spec: str) -> Policy:
    """The policy a `--model` value names; errors are one line for the user."""
    kind, _, rest = spec.partition(":")
    if kind == "replay" and rest:
        return ReplayPolicy(Path(rest))
    if kind == "openai" and rest:
        raise PolicyError(
            f"--model {spec}: the openai: backend is not available in this version yet; "
            "use replay:PATH"
        )
    if not spec.strip():
        raise PolicyError("--model is empty: give replay:PATH, openai:URL or a model id/directory")
    raise PolicyError(
        f"--model {spec}: local transformers inference is not available in this version yet; "
        "use replay:PATH"
    )


__all__ = ["Completion", "Policy", "PolicyError", "ReplayPolicy", "load_policy"]
