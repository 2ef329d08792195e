"""The `create` tool: a new file whose parent directory exists (cwm-protocol.md §6)."""

from __future__ import annotations

import posixpath

from cwm_agent.tools.files import ToolFiles
from cwm_agent.tools.result import ToolResult

# The kernel's own file systems: a file written there through the archive API
# lands in the image layer under the mount, where nothing inside can see it.
VIRTUAL_ROOTS = ("/proc", "/dev", "/sys")


def _virtual(path: str) -> bool:
    return any(path == root or path.startswith(root + "/") for root in VIRTUAL_ROOTS)


def _refused(folder: str) -> ToolResult:
    return ToolResult(
        f"File creation failed. {folder} is in a virtual file system "
        f"({', '.join(VIRTUAL_ROOTS)}), where the tool cannot create files.",
        ok=False,
    )


def run_create(files: ToolFiles, argument: str) -> ToolResult:
    head, _, content = argument.partition("\n")
    path = head.strip()
    if not path:
        return ToolResult("Path is empty. Please provide a valid path.", ok=False)
    target = files.resolve(path)
    if _virtual(posixpath.dirname(target)):
        return _refused(posixpath.dirname(target))
    if files.sandbox.stat(target) is not None:
        return ToolResult(
            f"{path} already exists. Cannot create a new file at an existing path.", ok=False
        )
    parent = posixpath.dirname(target)
    parent_stat = files.sandbox.stat(parent)
    if parent_stat is None or not parent_stat.is_dir:
        return ToolResult(
            f"File creation failed. The parent directory {parent} does not exist.", ok=False
        )
    if _virtual(parent_stat.path):  # reached through a symlink
        return _refused(parent_stat.path)
    files.sandbox.write_file(target, content.encode("utf-8", "surrogateescape"), mode=0o644)
    lines = content.count("\n") + 1
    return ToolResult(f"File created successfully at: {path} ({lines} lines).", ok=True)
