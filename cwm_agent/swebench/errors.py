"""The one error type of SWE-bench commands a user can cause."""

from __future__ import annotations

from cwm_agent.errors import UserError


class SwebenchError(UserError):
    """Bad dataset, selection, predictions or options; the message is meant for users."""
