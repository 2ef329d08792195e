"""What commands print: text from the model, a repository or a dataset made safe
to print, and the hint that ends a run.

A model can write escape sequences (`ESC]0;…` retitles the terminal, `ESC[2J`
clears it) into its tool calls and their output; the live view shows parts of
those, so control characters are dropped and rich markup is escaped.
"""

from __future__ import annotations

import re
from pathlib import Path

from rich.markup import escape

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # keeps tab and newline


def shown(text: str) -> str:
    """`text` for a rich console: no control characters, no markup."""
    return escape(_CONTROL.sub("", text))


def how_to_open(folder: Path | str) -> str:
    """The line runs end with, so their page is one command away (`cwm-agent view`)."""
    return f"view: cwm-agent view {folder}"
