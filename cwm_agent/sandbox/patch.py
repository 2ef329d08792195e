"""The tree's changes against the start commit, as a patch `git apply` accepts.

Computed with a throw-away index inside the container, so the agent's own
index, staged files and branches are left exactly as the agent left them.
New files are included (ignored ones are not); binary files are carried as
git binary patches and listed, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from cwm_agent.sandbox.container import Sandbox
from cwm_agent.sandbox.errors import SandboxError

_SCRIPT = r"""
set -e
g() { git -c safe.directory='*' -c diff.noprefix=false -c core.quotepath=off "$@"; }
export GIT_INDEX_FILE="$(g rev-parse --absolute-git-dir)/cwm-agent-index.$$"
trap 'rm -f "$GIT_INDEX_FILE"' EXIT
g read-tree "$1"
g add -A .
g diff --cached --numstat -z --no-renames "$1"
printf '%s' "$2"
g diff --cached --binary --full-index --no-renames --no-color --no-ext-diff "$1"
"""

_SEPARATOR = "\n=== cwm-agent: patch follows ===\n"  # cannot occur in -z numstat output


@dataclass(frozen=True)
class TreePatch:
    """`text` is the patch (undecodable bytes kept via surrogateescape)."""

    text: str
    files: list[str]
    binary_files: list[str]

    def encode(self) -> bytes:
        return self.text.encode("utf-8", "surrogateescape")


def tree_patch(sandbox: Sandbox, repo: str, base: str = "HEAD") -> TreePatch:
    code, out, err = sandbox.exec(["bash", "-c", _SCRIPT, "bash", base, _SEPARATOR], workdir=repo)
    if code != 0:
        raise SandboxError(f"cannot diff {repo} against {base}: {(err or out).decode()[-300:]}")
    numstat, _, patch = out.partition(_SEPARATOR.encode())
    files, binary = [], []
    for entry in numstat.split(b"\0"):
        if not entry:
            continue
        added, deleted, name = entry.decode("utf-8", "surrogateescape").split("\t", 2)
        files.append(name)
        if added == deleted == "-":
            binary.append(name)
    return TreePatch(patch.decode("utf-8", "surrogateescape"), files, binary)
