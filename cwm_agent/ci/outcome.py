"""Exit codes of `cwm-agent ci`: one per reason to stop, so a workflow can branch on them."""

from __future__ import annotations

from enum import IntEnum

from cwm_agent.errors import UserError


class ExitCode(IntEnum):
    """Documented in the README's "CI bot" section; 2 is left to usage errors."""

    DONE = 0  # PR opened or updated, or (--dry-run / --output-only) a patch that passed
    ERROR = 1  # bad input, API or push failure
    NOT_A_TRIGGER = 3  # wrong event, label or comment: nothing asked us to act
    NOT_ALLOWED = 4  # the commenter is not OWNER, MEMBER or COLLABORATOR
    CLOSED = 5  # the issue is closed (or is a pull request)
    LOCKED = 6  # the issue is locked
    LINKED = 7  # another open pull request already references the issue
    NO_FIX = 8  # the agent ended without a patch (turn or time cap, error, no submission)
    DOES_NOT_APPLY = 9  # the patch does not apply to the start commit
    PROTECTED = 10  # the patch touches CI configuration or a --protect glob
    TOO_LARGE = 11  # the patch exceeds a size limit
    TESTS_FAIL = 12  # --test-cmd fails on the patched tree
    SECRET = 13  # the token shows up in text about to be published


class CIError(UserError):
    """Bad input or a failed API call or push; the message is meant for users."""


class Stop(Exception):
    """End the run with `code`; the message is the one line a user reads."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
