"""File access for the file tools: paths as the model writes them, resolved
against the session's current directory, bytes moved by the archive API."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from cwm_agent.sandbox import Sandbox, ShellSession


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
