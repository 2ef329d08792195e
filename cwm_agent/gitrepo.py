"""The user's repository, read and written only through git's object store.

Nothing here touches the user's working tree, index, stash or current branch:
snapshots are tar streams of a commit's blobs, patches are checked and committed through
a throw-away index file, and a branch is created by pointing a new ref at a
commit made with `commit-tree`.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import git

from cwm_agent.errors import UserError

AUTHOR = ("cwm-agent", "cwm-agent@localhost")  # used only when the repo has no user set
_SYMLINK_MODE = 0o120000


class RepoError(UserError):
    """A problem with the user's repository; the message is meant for users."""


@dataclass(frozen=True)
class Snapshot:
    """The start state: a commit in the user's object store and its files as a tar."""

    commit: str
    description: str
    tar: bytes
    submodules: list[str]  # their paths: a submodule's files are not in the tar


def open_repo(path: Path) -> git.Repo:
    if not path.exists():
        raise RepoError(f"--repo {path}: no such directory")
    try:
        repo = git.Repo(path, search_parent_directories=False)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise RepoError(
            f"--repo {path} is not a git repository: run `git init` there first"
        ) from None
    if repo.bare:
        raise RepoError(f"--repo {path} is a bare repository: point at a working copy")
    if not repo.head.is_valid():
        raise RepoError(f"--repo {path} has no commits yet: commit the code to fix first")
    return repo


def snapshot(repo: git.Repo, include_uncommitted: bool = False) -> Snapshot:
    """HEAD, or with `include_uncommitted` HEAD plus the tracked files' changes.

    The uncommitted state becomes a commit object whose parent is HEAD, so
    patches and branches can start from it.
    """
    head = repo.head.commit.hexsha
    commit, description = head, f"HEAD ({head[:12]})"
    if include_uncommitted:
        tree = _working_tree(repo)
        if tree != repo.head.commit.tree.hexsha:
            commit = repo.git.execute(
                ["git", "commit-tree", tree, "-p", head, "-m", "cwm-agent: uncommitted changes"],
                env=_identity_env(repo),
            )
            description = f"HEAD ({head[:12]}) + uncommitted changes ({commit[:12]})"
    tree = repo.commit(commit).tree
    submodules = [item.path for item in tree.traverse() if item.type == "submodule"]
    return Snapshot(commit, description, _tree_tar(tree), submodules)


def _working_tree(repo: git.Repo) -> str:
    """The tree of the index plus the tracked files' unstaged changes, built in a
    copy of the index: the user's own index is not even refreshed."""
    with tempfile.TemporaryDirectory(prefix="cwm-agent-") as folder:
        index = Path(folder) / "index"
        own = Path(repo.git_dir) / "index"
        if own.exists():
            shutil.copyfile(own, index)
        env = {"GIT_INDEX_FILE": str(index)}
        repo.git.execute(["git", "add", "-u"], env=env)
        return repo.git.execute(["git", "write-tree"], env=env)


def _tree_tar(tree: git.Tree) -> bytes:
    """The commit's blobs exactly (unlike `git archive`, no .gitattributes filters,
    export-ignore or eol conversion), with executable bits and symlinks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for item in tree.traverse():
            info = tarfile.TarInfo(item.path)
            if item.type == "tree":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif item.type == "blob":
                data = item.data_stream.read()
                if item.mode == _SYMLINK_MODE:
                    info.type, info.linkname = (
                        tarfile.SYMTYPE,
                        data.decode("utf-8", "surrogateescape"),
                    )
                    tar.addfile(info)
                else:
                    info.size, info.mode = len(data), 0o755 if item.mode & 0o111 else 0o644
                    tar.addfile(info, io.BytesIO(data))
            # submodules (commits) are not part of the snapshot
    return buffer.getvalue()


def check_patch(repo: git.Repo, start: str, patch: bytes) -> str | None:
    """None if `patch` applies cleanly to `start`, else git's complaint."""
    with _scratch_index(repo, start) as (env, patch_file):
        patch_file.write_bytes(patch)
        try:
            repo.git.execute(["git", "apply", "--cached", "--check", str(patch_file)], env=env)
        except git.GitCommandError as exc:
            return (exc.stderr or str(exc)).strip().removeprefix("stderr: ").strip("'\n ")
    return None


def commit_on_branch(repo: git.Repo, start: str, patch: bytes, branch: str, message: str) -> str:
    """Commit `patch` on top of `start` as the new branch `branch`; returns the commit."""
    ensure_new_branch(repo, branch)
    commit = commit_patch(repo, start, patch, message)
    repo.git.execute(["git", "branch", branch, commit])
    return commit


def commit_patch(repo: git.Repo, start: str, patch: bytes, message: str) -> str:
    """A commit object of `start` plus `patch`, referenced by no branch (the CI bot
    pushes it by id, so the user's refs stay as they were)."""
    with _scratch_index(repo, start) as (env, patch_file):
        patch_file.write_bytes(patch)
        repo.git.execute(["git", "apply", "--cached", str(patch_file)], env=env)
        tree = repo.git.execute(["git", "write-tree"], env=env)
        return repo.git.execute(
            ["git", "commit-tree", tree, "-p", start, "-m", message], env=_identity_env(repo)
        )


def commit_tar(repo: git.Repo, commit: str) -> bytes:
    """The files of `commit` as a tar stream, as `snapshot` packs them."""
    return _tree_tar(repo.commit(commit).tree)


def ensure_new_branch(repo: git.Repo, branch: str) -> None:
    """Refuse names git rejects and branches that exist (never overwrite one)."""
    # `git branch` refuses HEAD and expands @ and @{-N} (`--branch` below would print
    # the expansion); the full-ref form checks everything else git checks.
    valid = not branch.startswith("-") and branch not in ("HEAD", "@") and "@{" not in branch
    try:
        repo.git.execute(["git", "check-ref-format", f"refs/heads/{branch}"])
        expanded = repo.git.execute(["git", "check-ref-format", "--branch", branch])
        valid = valid and expanded == branch
    except git.GitCommandError:
        valid = False
    if not valid:
        raise RepoError(f"--branch {branch!r} is not a valid branch name")
    for head in repo.heads:
        if head.name == branch:
            raise RepoError(f"branch {branch!r} already exists: choose another --branch name")
        if head.name.startswith(branch + "/") or branch.startswith(head.name + "/"):
            raise RepoError(
                f"--branch {branch!r} clashes with the existing branch {head.name!r} "
                "(one would be a folder of the other): choose another name"
            )


@contextmanager
def _scratch_index(repo: git.Repo, start: str) -> Iterator[tuple[dict[str, str], Path]]:
    with tempfile.TemporaryDirectory(prefix="cwm-agent-") as folder:
        env = {"GIT_INDEX_FILE": os.path.join(folder, "index")}
        repo.git.execute(["git", "read-tree", start], env=env)
        yield env, Path(folder) / "patch.diff"


def _identity_env(repo: git.Repo) -> dict[str, str]:
    """Author/committer from the repo's config, or cwm-agent's when none is set."""
    reader = repo.config_reader()
    name = reader.get_value("user", "name", AUTHOR[0])
    email = reader.get_value("user", "email", AUTHOR[1])
    return {
        "GIT_AUTHOR_NAME": str(name),
        "GIT_AUTHOR_EMAIL": str(email),
        "GIT_COMMITTER_NAME": str(name),
        "GIT_COMMITTER_EMAIL": str(email),
    }
