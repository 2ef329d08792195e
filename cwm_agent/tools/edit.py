"""The `edit` tool: one SEARCH/REPLACE block applied to a file (docs/protocol.md §6).

The text work is pure (`parse_edit`, `apply_edit`, `edit_bytes`, `not_edited`)
so its every message can be checked without a container; `run_edit` only moves
the bytes through the sandbox's archive API, so it works in images without Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cwm_agent.protocol.prompts import EDIT_TOOL_FORMAT
from cwm_agent.sandbox import FileChangedError, FileTooLargeError
from cwm_agent.tools.files import MAX_EDIT_BYTES, ToolFiles
from cwm_agent.tools.result import ToolResult, readable

PARSE_ERROR = (
    "Failed to parse the edit tool call. Make sure it has the following format:\n\n"
    + EDIT_TOOL_FORMAT
)
# The path is the line right before the block, as in CWM's own edit tool.
_BLOCK = re.compile(r"(.*)\n<<<<<<< SEARCH\n([\s\S]*?)\n=======\n([\s\S]*?)\n>>>>>>> REPLACE")
_CONTEXT = 8  # lines shown around the edit


@dataclass(frozen=True)
class EditCall:
    path: str
    search: str
    replace: str


def parse_edit(argument: str) -> EditCall | str:
    """The call, or the error message the model sees."""
    blocks = _BLOCK.findall(argument)
    if len(blocks) > 1:
        return f"Only one search/replace block is allowed. Got: {len(blocks)}."
    if not blocks:
        return PARSE_ERROR
    path, search, replace = blocks[0]
    return EditCall(path.strip(), search, replace)


def apply_edit(content: str, call: EditCall) -> tuple[str | None, str]:
    """(new content, message); new content is None when nothing was replaced.

    Semantics of the tool CWM was trained with: the search text, with a newline
    put in front of it and of the file, must occur exactly once (so a match
    starts at a line start). A CRLF file is matched as LF, as CWM's text-mode
    read did, but written back as CRLF instead of being converted.
    """
    crlf = "\r\n" in content and content.count("\r\n") == content.count("\n")
    text = "\n" + (content.replace("\r\n", "\n") if crlf else content)
    search = "\n" + call.search
    starts = _occurrences(text, search)
    if not starts:
        message = (
            f"No replacement was performed, the search lines did not appear verbatim in "
            f"{call.path}."
        )
        if call.search.split("\n", 1)[0].lstrip() in text:
            message += (
                " The search lines must exactly match one or more consecutive lines from the "
                "file, with indentations preserved."
            )
        return None, message
    if len(starts) > 1:
        numbers = [text.count("\n", 0, at) + 1 for at in starts]
        return None, (
            f"No replacement was performed. Multiple occurrences of the search text in lines "
            f"{numbers} of {call.path}. Please ensure it is unique."
        )
    at = starts[0]
    replacement = "\n" + call.replace
    new = (text[:at] + replacement + text[at + len(search) :])[1:]
    line = text.count("\n", 0, at) + 1
    first = max(1, line - _CONTEXT)
    last = line + _CONTEXT + replacement.count("\n") - 1
    snippet = "\n".join(
        f"{number:6}\t{text_line}"
        for number, text_line in enumerate(new.split("\n")[first - 1 : last], start=first)
    )
    message = (
        f"File {call.path} has been successfully updated at line {line} and now contains "
        f"{new.count(chr(10)) + 1} lines. The surrounding lines after the edit are shown below:\n"
        f"{snippet}\nReview the changes and make sure they are as expected."
    )
    return (new.replace("\n", "\r\n") if crlf else new), message


def _occurrences(text: str, part: str) -> list[int]:
    """Start of every occurrence, overlapping ones included."""
    found, at = [], text.find(part)
    while at >= 0:
        found.append(at)
        at = text.find(part, at + 1)
    return found


def edit_bytes(data: bytes, call: EditCall) -> tuple[bytes | None, str]:
    """`apply_edit` on a file's bytes: undecodable ones survive, the message is readable."""
    new, message = apply_edit(data.decode("utf-8", "surrogateescape"), call)
    return (None if new is None else new.encode("utf-8", "surrogateescape")), readable(message)


def not_edited(path: str, exc: FileTooLargeError | FileChangedError | None) -> str:
    """Why the file was not edited: missing (no `exc`), too large, or changing."""
    if exc is None:
        return f"The path {path} does not exist. Please provide a valid path."
    if isinstance(exc, FileTooLargeError):
        return (
            f"The file {path} is too large for the edit tool ({exc.size} bytes, the limit "
            f"is {exc.limit}). Use bash to inspect and change it."
        )
    return (
        f"The file {path} changed while it was being read, so it was not edited. "
        "Try again once nothing is writing to it, or use bash."
    )


def run_edit(files: ToolFiles, argument: str) -> ToolResult:
    call = parse_edit(argument)
    if isinstance(call, str):
        return ToolResult(call, ok=False)
    try:
        found = files.sandbox.read(files.resolve(call.path), MAX_EDIT_BYTES)
    except (FileTooLargeError, FileChangedError) as exc:
        return ToolResult(not_edited(call.path, exc), ok=False)
    if found is None:
        return ToolResult(not_edited(call.path, None), ok=False)
    stat, data = found
    new, message = edit_bytes(data, call)
    if new is None:
        return ToolResult(message, ok=False)
    files.sandbox.write_file(stat.path, new, stat.mode & 0o7777)
    return ToolResult(message, ok=True)
