"""What commands print: the console they print on, text from the model, a
repository or a dataset made safe to print, and the hint that ends a run.

A model can write escape sequences (`ESC]0;…` retitles the terminal, `ESC[2J`
clears it) into its tool calls and their output; the live view shows parts of
those, so escape sequences and other control characters are dropped and rich markup
is escaped. The HTML view drops the same (a test's coloured output reads as its text).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

# Whole escape sequences first (CSI `ESC[31m`, OSC `ESC]0;title BEL`, two-byte `ESC c`),
# then any control character left; tab and newline stay.
_SEQUENCE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-~])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(text: str) -> str:
    """`text` without escape sequences or control characters."""
    return _CONTROL.sub("", _SEQUENCE.sub("", text))


OFF_TERMINAL_WIDTH = 1000  # columns, where no terminal sets them: wide enough never to wrap


def make_console(**options: Any) -> Console:
    """A rich console; off a terminal (a pipe, a CI log), without COLUMNS, it does not
    wrap or cut lines at rich's default 80 columns: hashes, paths and table cells stay
    whole, and whatever shows the text wraps it."""
    found = Console(**options)
    if found.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        return found
    return Console(width=OFF_TERMINAL_WIDTH, **options)


def shown(text: str) -> str:
    """`text` for a rich console: plain, no markup."""
    return escape(plain(text))


def how_to_open(folder: Path | str) -> str:
    """The line runs end with, so their page is one command away (`cwm-agent view`)."""
    return f"view: cwm-agent view {folder}"
