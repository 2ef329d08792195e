"""The one error type of SWE-bench commands a user can cause."""

from __future__ import annotations


class SwebenchError(Exception):
    """Bad dataset, selection, predictions or options; the message is meant for users."""
