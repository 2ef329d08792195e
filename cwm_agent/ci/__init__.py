"""`cwm-agent ci`: an issue in, a draft pull request (or a comment) out, under guard rails.

One module per concern: `event` decides whether to act, `github` talks to the
REST API, `guards` judges the patch, `verify` runs the project's tests on it,
`push` hands the commit to the remote, `report` writes what is posted and
saved, and `bot` strings them together.
"""

from cwm_agent.ci.bot import CIResult, CISettings, run_ci
from cwm_agent.ci.outcome import CIError, ExitCode, Stop

__all__ = ["CIError", "CIResult", "CISettings", "ExitCode", "Stop", "run_ci"]
