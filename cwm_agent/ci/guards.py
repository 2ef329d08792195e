"""Guard rails on the patch before anything is pushed or posted.

They judge the commit that would be pushed, not the patch text: paths and line
counts come from `git diff --numstat --no-renames` between the start and that
commit, so quoting, renames and binary files cannot hide a path.
"""

from __future__ import annotations

import re

import git
from pydantic import BaseModel, Field

from cwm_agent.ci.outcome import ExitCode, Stop

# CI configuration: a patch here could run code with the workflow's secrets.
CI_CONFIG = (
    ".github/",
    ".gitlab-ci.yml",
    ".gitlab/",
    ".circleci/",
    "Jenkinsfile",
    ".travis.yml",
    "azure-pipelines.yml",
    ".azure-pipelines/",
    "bitbucket-pipelines.yml",
    ".buildkite/",
    ".drone.yml",
    "appveyor.yml",
    ".woodpecker.yml",
    ".woodpecker.yaml",
    ".woodpecker/",
)


class Limits(BaseModel):
    """Size limits on a patch a reviewer is asked to read."""

    max_files: int = Field(20, gt=0)
    max_lines: int = Field(1000, gt=0, description="added plus deleted lines")
    max_bytes: int = Field(200_000, gt=0)


class FileChange(BaseModel):
    path: str
    added: int  # -1 for a binary file
    deleted: int


def changes(repo: git.Repo, start: str, commit: str) -> list[FileChange]:
    """Every path the commit changes (both sides of a rename), with its line counts."""
    raw = repo.git.execute(["git", "diff", "--numstat", "-z", "--no-renames", start, commit])
    found = []
    for entry in raw.split("\0"):
        if entry:
            added, deleted, path = entry.split("\t", 2)
            found.append(FileChange(path=path, added=_count(added), deleted=_count(deleted)))
    return found


def check_paths(paths: list[str], protect: list[str]) -> None:
    """Refuse patches that touch CI configuration or a user's protected glob."""
    patterns = [*CI_CONFIG, *protect]
    for path in paths:
        for pattern in patterns:
            if matches(path, pattern):
                raise Stop(
                    ExitCode.PROTECTED,
                    f"refused: the patch touches {path} (protected by {pattern!r}); "
                    "such changes need a human author",
                )


def check_size(found: list[FileChange], patch: bytes, limits: Limits) -> None:
    files = len({change.path for change in found})
    lines = sum(max(change.added, 0) + max(change.deleted, 0) for change in found)
    for what, value, limit, flag in (
        ("files", files, limits.max_files, "--max-files"),
        ("changed lines", lines, limits.max_lines, "--max-lines"),
        ("bytes", len(patch), limits.max_bytes, "--max-bytes"),
    ):
        if value > limit:
            raise Stop(
                ExitCode.TOO_LARGE,
                f"refused: the patch has {value} {what}, over the limit of {limit} ({flag})",
            )


def check_no_secret(secret: str | None, texts: dict[str, str]) -> None:
    """Never publish the token, whatever path it might have taken into the outputs."""
    if not secret:
        return
    for name, text in texts.items():
        if secret in text:
            raise Stop(ExitCode.SECRET, f"refused: the token appears in the {name}; nothing posted")


def matches(path: str, pattern: str) -> bool:
    """Glob match in the style of .gitignore: `*` stays within a folder, `**` crosses
    folders, a pattern without `/` matches a name at any depth, and a pattern that
    ends in `/` matches everything below that folder. Case-insensitive, so case
    tricks do not slip past on case-insensitive checkouts."""
    anchored = "/" in pattern.rstrip("/")
    body = pattern.strip("/") if anchored else pattern.rstrip("/")
    regex = ""
    index = 0
    while index < len(body):
        if body.startswith("**/", index):
            regex, index = regex + "(?:.*/)?", index + 3
        elif body.startswith("**", index):
            regex, index = regex + ".*", index + 2
        elif body[index] == "*":
            regex, index = regex + "[^/]*", index + 1
        elif body[index] == "?":
            regex, index = regex + "[^/]", index + 1
        else:
            regex, index = regex + re.escape(body[index]), index + 1
    prefix = "" if anchored else "(?:.*/)?"
    suffix = "(?:/.*)?"  # a folder pattern covers what is inside it
    return re.fullmatch(prefix + regex + suffix, path, flags=re.IGNORECASE) is not None


def _count(field: str) -> int:
    return -1 if field == "-" else int(field)
