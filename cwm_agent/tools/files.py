"""File access for the file tools: paths as the model writes them, resolved
against the session's current directory, bytes moved by the archive API."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from cwm_agent.sandbox import Sandbox, ShellSession

# What the host holds of one file for a tool: a container's memory limit does not
# apply on the host, and a sparse file costs nothing inside it. Larger files are
# the model's to handle with bash, as it would any huge file.
MAX_EDIT_BYTES = 16 * 2**20
MAX_SUBMISSION_BYTES = 2 * 2**20  # a patch; it is also kept in trajectory.json


@dataclass
class ToolFiles:
    """The sandbox's files as the file tools see them."""

    sandbox: Sandbox
    session: ShellSession

    def resolve(self, path: str) -> str:
        if posixpath.isabs(path):
            return posixpath.normpath(path)
        cwd = self.session.query('"$PWD"')
        return posixpath.normpath(posixpath.join(cwd, path))
