"""The `create` tool: a new file whose parent directory exists (docs/protocol.md §6)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from cwm_agent.tools.files import ToolFiles
from cwm_agent.tools.result import ToolResult

# The kernel's own file systems: a file written there through the archive API
# lands in the image layer under the mount, where nothing inside can see it.
VIRTUAL_ROOTS = ("/proc", "/dev", "/sys")


@dataclass(frozen=True)
class CreateCall:
    path: str  # as the model wrote it
    content: str


def parse_create(argument: str) -> CreateCall | str:
    """The call (the path on the first line, the content after it), or the error
    message the model sees."""
    head, _, content = argument.partition("\n")
    path = head.strip()
    if not path:
        return "Path is empty. Please provide a valid path."
    return CreateCall(path, content)


def refusal(folder: str) -> str | None:
    """The message refusing a file in `folder`, if it is in a kernel file system."""
    if not any(folder == root or folder.startswith(root + "/") for root in VIRTUAL_ROOTS):
        return None
    return (
        f"File creation failed. {folder} is in a virtual file system "
        f"({', '.join(VIRTUAL_ROOTS)}), where the tool cannot create files."
    )


def created(call: CreateCall) -> str:
    lines = call.content.count("\n") + 1
    return f"File created successfully at: {call.path} ({lines} lines)."


def run_create(files: ToolFiles, argument: str) -> ToolResult:
    call = parse_create(argument)
    if isinstance(call, str):
        return ToolResult(call, ok=False)
    target = files.resolve(call.path)
    parent = posixpath.dirname(target)
    if (refused := refusal(parent)) is not None:
        return ToolResult(refused, ok=False)
    if files.sandbox.stat(target) is not None:
        return ToolResult(
            f"{call.path} already exists. Cannot create a new file at an existing path.",
            ok=False,
        )
    parent_stat = files.sandbox.stat(parent)
    if parent_stat is None or not parent_stat.is_dir:
        return ToolResult(
            f"File creation failed. The parent directory {parent} does not exist.", ok=False
        )
    if (refused := refusal(parent_stat.path)) is not None:  # reached through a symlink
        return ToolResult(refused, ok=False)
    files.sandbox.write_file(target, call.content.encode("utf-8", "surrogateescape"), mode=0o644)
    return ToolResult(created(call), ok=True)
