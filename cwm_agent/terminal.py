"""What commands print: the console they print on, text from the model, a
repository or a dataset made safe to print, and the hint that ends a run.

A model can write escape sequences (`ESC]0;…` retitles the terminal, `ESC[2J`
clears it) into its tool calls and their output; the live view shows parts of
those, so control characters are dropped and rich markup is escaped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # keeps tab and newline


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
    """`text` for a rich console: no control characters, no markup."""
    return escape(_CONTROL.sub("", text))


def how_to_open(folder: Path | str) -> str:
    """The line runs end with, so their page is one command away (`cwm-agent view`)."""
    return f"view: cwm-agent view {folder}"
