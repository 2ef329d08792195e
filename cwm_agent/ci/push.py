"""Pushing the fix branch, done by the host and never by the agent.

The token travels only in the environment of this one `git push` (as an
`http.<server>/.extraheader` set through GIT_CONFIG_*): not on the command
line, not in the repository's config on disk, not in the sandbox.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

from cwm_agent.ci.outcome import CIError


class PushError(CIError):
    """The push failed; the message is meant for users."""


def auth_env(server_url: str, token: str | None) -> dict[str, str]:
    """Git config entries, as environment variables, that authenticate to `server_url`."""
    env = {"GIT_TERMINAL_PROMPT": "0"}
    if token:
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        key = f"http.{server_url.rstrip('/')}/.extraheader"
        # The empty value first clears a header a checkout may have persisted in
        # .git/config: two Authorization headers make the server refuse the push.
        env |= {
            "GIT_CONFIG_COUNT": "2",
            "GIT_CONFIG_KEY_0": key,
            "GIT_CONFIG_VALUE_0": "",
            "GIT_CONFIG_KEY_1": key,
            "GIT_CONFIG_VALUE_1": f"AUTHORIZATION: basic {basic}",
        }
    return env


def push_commit(
    repo: Path, remote: str, commit: str, branch: str, server_url: str, token: str | None
) -> None:
    """Force `refs/heads/BRANCH` on `remote` to `commit` (re-runs replace the bot's own
    branch); exactly this one ref is pushed, no tags, no other branches."""
    done = subprocess.run(
        ["git", "push", "--no-verify", "--porcelain", remote, f"+{commit}:refs/heads/{branch}"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, **auth_env(server_url, token)},
        check=False,
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        detail = lines[-1] if lines else f"exit {done.returncode}"
        if token:
            detail = detail.replace(token, "***")
        raise PushError(
            f"cannot push {branch} to {remote}: {detail}: check --remote and that the "
            "token may write contents"
        )
