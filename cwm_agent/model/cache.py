"""The keyword a model takes its KV cache by.

transformers 5.24 renamed `past_key_values` to `cache` in the models' forward and
in `generate()` (the old name warns, and is to go in 5.40); older releases know
only `past_key_values`. The keyword is read off the model's own signature, so one
code path serves both.
"""

from __future__ import annotations

import inspect
from typing import Any


def cache_kwarg(model: Any) -> str:
    """`cache` where the model's forward takes it, else `past_key_values`."""
    parameters = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
