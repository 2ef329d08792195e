"""`cwm-agent view`: a run folder as pages people would rather look at than JSON."""

from cwm_agent.view.render import write
from cwm_agent.view.runs import ViewError, kind_of

PAGE = "index.html"  # the page `view` writes into a run folder by default

__all__ = ["PAGE", "ViewError", "kind_of", "write"]
