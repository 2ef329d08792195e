"""`cwm-agent view`: a run folder as pages people would rather look at than JSON."""

from pathlib import Path

from cwm_agent.view.render import write
from cwm_agent.view.runs import ViewError, kind_of

PAGE = "index.html"  # the page `view` writes into a run folder by default

__all__ = ["PAGE", "ViewError", "how_to_open", "kind_of", "write"]


def how_to_open(folder: Path | str) -> str:
    """The line runs end with, so their page is one command away."""
    return f"view: cwm-agent view {folder}"
