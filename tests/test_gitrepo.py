"""cwm_agent.gitrepo against real repositories made with the git CLI.

The module must read and write the user's repository only through git's object
store, so the central test snapshots, checks and commits on a dirty repository
and then asserts that nothing the user can see (files, status, index, HEAD,
branch, stash) has changed.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import git
import pytest

from cwm_agent.gitrepo import (
    AUTHOR,
    RepoError,
    check_patch,
    commit_on_branch,
    ensure_new_branch,
    open_repo,
    snapshot,
)

SETUP_IDENTITY = ("-c", "user.name=Setup Person", "-c", "user.email=setup@example.com")
BINARY = bytes(range(256)) * 4 + b"\x00\xff\x00end"


def run_git(cwd: Path, *args: str, stdin: bytes | None = None) -> bytes:
    """Run git for test setup/inspection; the identity is given per command, never globally."""
    result = subprocess.run(
        ["git", *SETUP_IDENTITY, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        check=True,
    )
    return result.stdout


def out(cwd: Path, *args: str) -> str:
    """git's stdout as stripped text."""
    return run_git(cwd, *args).decode().strip()


def tar_files(data: bytes) -> dict[str, bytes]:
    """The regular files of a tar stream, by path."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files: dict[str, bytes] = {}
        for member in tar.getmembers():
            if member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[member.name] = extracted.read()
        return files


def commit_files(repo: Path, rev: str) -> dict[str, bytes]:
    """The blobs of every regular file in `rev`'s tree, read straight from the object store."""
    files: dict[str, bytes] = {}
    listing = run_git(repo, "ls-tree", "-r", "-z", rev).split(b"\0")
    for entry in filter(None, listing):
        meta, path = entry.split(b"\t", 1)
        mode, kind, sha = meta.decode().split()
        if kind == "blob" and mode != "120000":
            files[path.decode()] = run_git(repo, "cat-file", "blob", sha)
    return files


def worktree_files(repo: Path) -> dict[str, bytes]:
    """Every file under the working tree (outside .git), byte for byte."""
    files: dict[str, bytes] = {}
    for root, dirs, names in os.walk(repo):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in names:
            path = Path(root, name)
            key = path.relative_to(repo).as_posix()
            files[key] = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
    return files


@dataclass(frozen=True)
class UserState:
    """Everything about a repository the user could notice changing."""

    files: dict[str, bytes]
    status: str
    index: str
    staged_diff: str
    head: str
    branch: str
    stash_list: str
    refs: frozenset[str]


def user_state(repo: Path, ignore_ref: str | None = None) -> UserState:
    """Capture the user-visible state; `ignore_ref` is a ref the test expects to be added."""
    refs = out(repo, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
    return UserState(
        files=worktree_files(repo),
        status=out(repo, "status", "--porcelain=v1", "--untracked-files=all", "--ignored"),
        index=out(repo, "ls-files", "-s"),
        staged_diff=out(repo, "diff", "--cached", "--binary"),
        head=out(repo, "rev-parse", "HEAD"),
        branch=out(repo, "symbolic-ref", "HEAD"),
        stash_list=out(repo, "stash", "list", "--format=%H %gs"),
        refs=frozenset(r for r in refs if r.split()[0] != ignore_ref),
    )


@pytest.fixture(autouse=True)
def no_global_git_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's identity and config out: only the test's repos are configured."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in (
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "EMAIL",
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_SYSTEM",
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def clean_repo(tmp_path: Path) -> Path:
    """A repo on `main` with text, binary, executable, symlink and ignore rules; clean tree."""
    repo = tmp_path / "user-repo"
    run_git(tmp_path, "init", "-q", "-b", "main", str(repo))
    (repo / "src").mkdir()
    (repo / "src" / "app.py").write_text("def answer():\n    return 41\n")
    (repo / "src" / "util.py").write_text("X = 1\nY = 2\nZ = 3\n")
    (repo / "README.md").write_text("# Demo\n\nSome text.\n")
    (repo / "old.txt").write_text("to be deleted\n")
    (repo / "data.bin").write_bytes(BINARY)
    (repo / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (repo / "run.sh").chmod(0o755)
    os.symlink("README.md", repo / "link.md")
    (repo / ".gitignore").write_text("*.log\nbuild/\n")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-q", "-m", "initial")
    (repo / "src" / "util.py").write_text("X = 1\nY = 2\nZ = 3\nW = 4\n")
    run_git(repo, "commit", "-q", "-am", "second")
    return repo


@pytest.fixture
def dirty_repo(clean_repo: Path) -> Path:
    """The clean repo plus a stash entry, unstaged/staged edits, untracked and ignored files."""
    repo = clean_repo
    (repo / "README.md").write_text("# Demo\n\nStashed edit.\n")
    run_git(repo, "stash", "push", "-q", "-m", "user's own stash")
    (repo / "src" / "app.py").write_text("def answer():\n    return 42  # unstaged fix\n")
    (repo / "src" / "util.py").write_text("X = 10\nY = 2\nZ = 3\nW = 4\n")
    run_git(repo, "add", "src/util.py")  # staged modification
    (repo / "src" / "util.py").write_text("X = 10\nY = 20\nZ = 3\nW = 4\n")  # plus unstaged
    (repo / "staged_new.txt").write_text("a new file, only in the index\n")
    run_git(repo, "add", "staged_new.txt")
    (repo / "old.txt").unlink()  # unstaged deletion of a tracked file
    (repo / "untracked.txt").write_text("not tracked\n")
    (repo / "debug.log").write_text("ignored\n")
    (repo / "build").mkdir()
    (repo / "build" / "out.o").write_bytes(b"\x7fELF ignored")
    return repo


@pytest.fixture
def scratch(tmp_path: Path, clean_repo: Path) -> Path:
    """A separate clone for making and applying patches, never the user's repo.

    A local clone copies the whole object directory, so dangling snapshot commits are there too.
    """
    clone = tmp_path / "scratch"
    run_git(tmp_path, "clone", "-q", str(clean_repo), str(clone))
    return clone


def refresh_scratch(clone: Path, source: Path) -> None:
    """Let the clone read objects made in the user's repo since cloning (snapshot commits)."""
    objects = source / ".git" / "objects"
    (clone / ".git" / "objects" / "info" / "alternates").write_text(f"{objects}\n")


def make_patch(clone: Path, start: str, edit: Callable[[Path], None]) -> bytes:
    """`git diff --binary` of `edit` applied to `start` in the scratch clone."""
    run_git(clone, "checkout", "-q", "--detach", start)
    edit(clone)
    run_git(clone, "add", "-A")
    patch = run_git(clone, "diff", "--cached", "--binary", start)
    run_git(clone, "reset", "-q", "--hard", start)
    run_git(clone, "clean", "-qfdx")
    return patch


def applied_tree(clone: Path, start: str, patch: bytes) -> str:
    """The tree git gets when applying `patch` to a checkout of `start` (the expected result)."""
    run_git(clone, "checkout", "-q", "--detach", start)
    run_git(clone, "apply", "--index", "-", stdin=patch)
    tree = out(clone, "write-tree")
    run_git(clone, "reset", "-q", "--hard", start)
    return tree


def rich_edit(root: Path) -> None:
    """A modification, a deletion, a new text file, a new binary file and a binary change."""
    (root / "src" / "app.py").write_text("def answer():\n    return 42\n")
    (root / "run.sh").unlink()
    (root / "src" / "new_module.py").write_text("VALUE = 'new'\n")
    (root / "assets").mkdir()
    (root / "assets" / "logo.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + BINARY[::-1])
    (root / "data.bin").write_bytes(BINARY[:500] + b"\x00changed\x00" + BINARY[500:])


# --- open_repo ---------------------------------------------------------------------------------


def assert_user_message(exc: RepoError, path: Path, *phrases: str) -> None:
    """One line, naming the path and saying what is wrong / what to do."""
    message = str(exc)
    assert "\n" not in message
    assert str(path) in message
    for phrase in phrases:
        assert phrase in message


def test_open_repo_returns_the_working_copy(clean_repo: Path) -> None:
    """The happy path: a non-bare repo with commits opens on its own working tree."""
    repo = open_repo(clean_repo)
    assert Path(repo.working_tree_dir or "") == clean_repo
    assert repo.head.commit.hexsha == out(clean_repo, "rev-parse", "HEAD")


def test_open_repo_missing_directory(tmp_path: Path) -> None:
    """A typo in --repo must be a user message, not a traceback."""
    missing = tmp_path / "nope"
    with pytest.raises(RepoError) as info:
        open_repo(missing)
    assert_user_message(info.value, missing, "no such directory")


def test_open_repo_not_a_git_repository(tmp_path: Path) -> None:
    """A plain directory: tell the user to `git init`."""
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "file.txt").write_text("x\n")
    with pytest.raises(RepoError) as info:
        open_repo(plain)
    assert_user_message(info.value, plain, "not a git repository", "git init")


def test_open_repo_bare(tmp_path: Path) -> None:
    """A bare repo has no working copy to describe: say so."""
    bare = tmp_path / "bare.git"
    run_git(tmp_path, "init", "-q", "--bare", str(bare))
    with pytest.raises(RepoError) as info:
        open_repo(bare)
    assert_user_message(info.value, bare, "bare", "working copy")


def test_open_repo_no_commits(tmp_path: Path) -> None:
    """An unborn HEAD cannot be snapshotted: ask the user to commit first."""
    empty = tmp_path / "empty"
    run_git(tmp_path, "init", "-q", str(empty))
    (empty / "file.txt").write_text("x\n")
    with pytest.raises(RepoError) as info:
        open_repo(empty)
    assert_user_message(info.value, empty, "no commits", "commit")


# --- snapshot ----------------------------------------------------------------------------------


def test_snapshot_head_holds_exactly_the_tracked_files(dirty_repo: Path) -> None:
    """Without uncommitted changes: HEAD's files only, whatever the working tree holds."""
    head = out(dirty_repo, "rev-parse", "HEAD")
    snap = snapshot(open_repo(dirty_repo), include_uncommitted=False)
    assert snap.commit == head
    assert head[:12] in snap.description
    files = tar_files(snap.tar)
    assert files == commit_files(dirty_repo, head)
    assert "untracked.txt" not in files
    assert "debug.log" not in files
    assert "staged_new.txt" not in files
    assert files["src/app.py"] == b"def answer():\n    return 41\n"
    assert files["old.txt"] == b"to be deleted\n"


def test_snapshot_keeps_modes_and_symlinks(clean_repo: Path) -> None:
    """The sandbox must see the executable bit and symlinks as committed."""
    snap = snapshot(open_repo(clean_repo))
    with tarfile.open(fileobj=io.BytesIO(snap.tar)) as tar:
        assert tar.getmember("run.sh").mode & 0o111
        link = tar.getmember("link.md")
        assert link.issym()
        assert link.linkname == "README.md"


def test_snapshot_with_uncommitted_changes(dirty_repo: Path) -> None:
    """Tracked edits (staged or not) and deletions are in; untracked and ignored are not."""
    head = out(dirty_repo, "rev-parse", "HEAD")
    snap = snapshot(open_repo(dirty_repo), include_uncommitted=True)
    assert snap.commit != head
    assert out(dirty_repo, "cat-file", "-t", snap.commit) == "commit"
    assert out(dirty_repo, "rev-list", "--parents", "-n", "1", snap.commit).split() == [
        snap.commit,
        head,
    ]
    assert head[:12] in snap.description
    assert snap.commit[:12] in snap.description

    files = tar_files(snap.tar)
    assert files == commit_files(dirty_repo, snap.commit)
    assert files["src/app.py"] == b"def answer():\n    return 42  # unstaged fix\n"
    assert files["src/util.py"] == b"X = 10\nY = 20\nZ = 3\nW = 4\n"
    assert files["staged_new.txt"] == b"a new file, only in the index\n"
    assert "old.txt" not in files
    assert "untracked.txt" not in files
    assert "debug.log" not in files
    assert not any(name.startswith("build/") for name in files)
    assert files["README.md"] == b"# Demo\n\nSome text.\n"  # the stash entry is not applied
    tracked = set(out(dirty_repo, "ls-files").splitlines()) - {"old.txt", "link.md"}
    assert set(files) == tracked


@pytest.mark.parametrize("extra", ["nothing", "untracked and ignored files"])
def test_snapshot_uncommitted_on_clean_tree_is_head(clean_repo: Path, extra: str) -> None:
    """With no tracked changes there is nothing to commit: the start is HEAD itself."""
    if extra != "nothing":
        (clean_repo / "untracked.txt").write_text("u\n")
        (clean_repo / "debug.log").write_text("i\n")
    head = out(clean_repo, "rev-parse", "HEAD")
    snap = snapshot(open_repo(clean_repo), include_uncommitted=True)
    assert snap.commit == head
    assert tar_files(snap.tar) == commit_files(clean_repo, head)


def test_snapshot_ignores_archive_attributes(clean_repo: Path) -> None:
    """Tracked files marked export-ignore or eol=crlf must still be in the tar as committed."""
    (clean_repo / "tests").mkdir()
    (clean_repo / "tests" / "test_app.py").write_text("def test():\n    pass\n")
    (clean_repo / ".gitattributes").write_text("tests/ export-ignore\n*.py text eol=crlf\n")
    run_git(clean_repo, "add", "-A")
    run_git(clean_repo, "commit", "-q", "-m", "attributes")
    snap = snapshot(open_repo(clean_repo))
    assert tar_files(snap.tar) == commit_files(clean_repo, "HEAD")


# --- the key property: the user's state is untouched -------------------------------------------


def test_nothing_the_user_sees_changes(dirty_repo: Path, scratch: Path) -> None:
    """Snapshot, check and commit on a dirty repo leave files, index, HEAD, branch, stash alone."""
    branch = "cwm/fix-1"
    before = user_state(dirty_repo)
    before_stash = out(dirty_repo, "rev-parse", "refs/stash")
    repo = open_repo(dirty_repo)

    snapshot(repo, include_uncommitted=False)
    snap = snapshot(repo, include_uncommitted=True)
    refresh_scratch(scratch, dirty_repo)
    patch = make_patch(scratch, snap.commit, rich_edit)
    assert check_patch(repo, snap.commit, patch) is None
    assert check_patch(repo, snap.commit, b"garbage, not a patch\n")
    commit = commit_on_branch(repo, snap.commit, patch, branch, "cwm-agent: fix")
    with pytest.raises(RepoError):
        commit_on_branch(repo, snap.commit, patch, branch, "again")
    with pytest.raises(RepoError):
        commit_on_branch(repo, snap.commit, patch, "bad..name", "invalid")

    after = user_state(dirty_repo, ignore_ref=f"refs/heads/{branch}")
    assert after.files == before.files
    assert after.status == before.status
    assert after.index == before.index
    assert after.staged_diff == before.staged_diff
    assert after.head == before.head
    assert after.branch == before.branch == "refs/heads/main"
    assert after.stash_list == before.stash_list
    assert out(dirty_repo, "rev-parse", "refs/stash") == before_stash
    assert after.refs == before.refs
    assert out(dirty_repo, "rev-parse", f"refs/heads/{branch}") == commit
    assert not (dirty_repo / ".git" / "MERGE_HEAD").exists()


# --- check_patch -------------------------------------------------------------------------------


def test_check_patch_accepts_text_new_and_binary_changes(clean_repo: Path, scratch: Path) -> None:
    """A `git diff --binary` with a new file, a deletion and binary changes applies to start."""
    head = out(clean_repo, "rev-parse", "HEAD")
    patch = make_patch(scratch, head, rich_edit)
    assert b"GIT binary patch" in patch
    assert b"new file mode" in patch
    assert check_patch(open_repo(clean_repo), head, patch) is None


def test_check_patch_reports_a_patch_that_does_not_apply(clean_repo: Path) -> None:
    """Wrong context: git's own complaint comes back, cleaned of gitpython's wrapping."""
    patch = (
        b"diff --git a/README.md b/README.md\n"
        b"--- a/README.md\n"
        b"+++ b/README.md\n"
        b"@@ -1,3 +1,3 @@\n"
        b" # Something else\n"
        b" \n"
        b"-Other text.\n"
        b"+New text.\n"
    )
    head = out(clean_repo, "rev-parse", "HEAD")
    message = check_patch(open_repo(clean_repo), head, patch)
    assert message
    assert "README.md" in message
    assert not message.startswith(("stderr", "'", "Cmd("))


def test_check_patch_uses_start_not_the_working_tree(dirty_repo: Path, scratch: Path) -> None:
    """A patch made on the uncommitted snapshot applies there but not to plain HEAD."""
    repo = open_repo(dirty_repo)
    head = out(dirty_repo, "rev-parse", "HEAD")
    snap = snapshot(repo, include_uncommitted=True)
    refresh_scratch(scratch, dirty_repo)

    def edit(root: Path) -> None:
        (root / "src" / "app.py").write_text("def answer():\n    return 43  # unstaged fix\n")

    patch = make_patch(scratch, snap.commit, edit)
    assert check_patch(repo, snap.commit, patch) is None
    message = check_patch(repo, head, patch)
    assert message
    assert "src/app.py" in message


@pytest.mark.parametrize("patch", [b"", b"this is not a diff\n"], ids=["empty", "garbage"])
def test_check_patch_rejects_non_patches(clean_repo: Path, patch: bytes) -> None:
    """Input that is no patch at all is refused with a message, not None."""
    assert check_patch(open_repo(clean_repo), "HEAD", patch)


# --- commit_on_branch --------------------------------------------------------------------------


@pytest.mark.parametrize("uncommitted", [False, True], ids=["from-head", "from-snapshot"])
def test_commit_on_branch_makes_one_commit_on_start(
    dirty_repo: Path, scratch: Path, uncommitted: bool
) -> None:
    """The branch has exactly start + patch, identical to `git apply` in a separate clone."""
    repo = open_repo(dirty_repo)
    start = snapshot(repo, include_uncommitted=uncommitted).commit
    refresh_scratch(scratch, dirty_repo)
    patch = make_patch(scratch, start, rich_edit)

    commit = commit_on_branch(repo, start, patch, "cwm/fix", "Fix the answer\n\nDetails.")
    assert out(dirty_repo, "rev-parse", "refs/heads/cwm/fix") == commit
    assert out(dirty_repo, "rev-list", "--parents", "-n", "1", commit).split() == [commit, start]
    assert out(dirty_repo, "rev-parse", f"{commit}^{{tree}}") == applied_tree(scratch, start, patch)
    assert out(dirty_repo, "log", "-1", "--format=%B", commit) == "Fix the answer\n\nDetails."
    files = commit_files(dirty_repo, commit)
    assert files["assets/logo.bin"].startswith(b"\x89PNG\r\n\x1a\n\x00\x00")
    assert "run.sh" not in files


def test_commit_on_branch_falls_back_to_cwm_agent_identity(clean_repo: Path, scratch: Path) -> None:
    """No user.name/user.email anywhere: author and committer are cwm-agent."""
    assert subprocess.run(["git", "config", "user.name"], cwd=clean_repo).returncode == 1
    repo = open_repo(clean_repo)
    (clean_repo / "README.md").write_text("# Demo\n\nDirty.\n")
    snap = snapshot(repo, include_uncommitted=True)
    refresh_scratch(scratch, clean_repo)
    patch = make_patch(scratch, snap.commit, rich_edit)
    commit = commit_on_branch(repo, snap.commit, patch, "cwm/fix", "fix")
    expected = f"{AUTHOR[0]} <{AUTHOR[1]}>"
    for rev in (commit, snap.commit):
        assert out(clean_repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", rev) == (
            f"{expected}|{expected}"
        )


def test_commit_on_branch_uses_the_repos_identity(clean_repo: Path, scratch: Path) -> None:
    """When the repo has a user configured, the commit is theirs."""
    run_git(clean_repo, "config", "user.name", "Repo User")
    run_git(clean_repo, "config", "user.email", "repo@example.com")
    head = out(clean_repo, "rev-parse", "HEAD")
    patch = make_patch(scratch, head, rich_edit)
    commit = commit_on_branch(open_repo(clean_repo), head, patch, "cwm/fix", "fix")
    assert out(clean_repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", commit) == (
        "Repo User <repo@example.com>|Repo User <repo@example.com>"
    )


def test_commit_on_branch_refuses_an_existing_branch(clean_repo: Path, scratch: Path) -> None:
    """Never overwrite a branch: it keeps pointing where it did."""
    run_git(clean_repo, "branch", "taken", "HEAD~1")
    taken = out(clean_repo, "rev-parse", "refs/heads/taken")
    head = out(clean_repo, "rev-parse", "HEAD")
    patch = make_patch(scratch, head, rich_edit)
    repo = open_repo(clean_repo)
    for name in ("taken", "main"):
        with pytest.raises(RepoError, match="already exists") as info:
            commit_on_branch(repo, head, patch, name, "fix")
        assert name in str(info.value)
    assert out(clean_repo, "rev-parse", "refs/heads/taken") == taken
    assert out(clean_repo, "rev-parse", "refs/heads/main") == head


@pytest.mark.parametrize(
    "name", ["bad..name", "with space", "ends.lock", "trailing/", "a~b", "-dash", "x:y", ""]
)
def test_commit_on_branch_refuses_invalid_names(clean_repo: Path, name: str) -> None:
    """Names git rejects are a user message, and no ref appears."""
    refs = out(clean_repo, "for-each-ref")
    head = out(clean_repo, "rev-parse", "HEAD")
    with pytest.raises(RepoError, match="not a valid branch name"):
        commit_on_branch(open_repo(clean_repo), head, b"", name, "fix")
    assert out(clean_repo, "for-each-ref") == refs


def test_commit_on_branch_with_a_bad_patch_creates_no_branch(clean_repo: Path) -> None:
    """A patch that does not apply fails before any ref is written."""
    head = out(clean_repo, "rev-parse", "HEAD")
    with pytest.raises((RepoError, git.GitCommandError)):
        commit_on_branch(open_repo(clean_repo), head, b"not a patch\n", "cwm/fix", "fix")
    assert out(clean_repo, "branch", "--list", "cwm/fix") == ""


def test_ensure_new_branch_accepts_a_fresh_valid_name(clean_repo: Path) -> None:
    """A new, well-formed name passes and creates nothing."""
    refs = out(clean_repo, "for-each-ref")
    ensure_new_branch(open_repo(clean_repo), "cwm/fix-2")
    assert out(clean_repo, "for-each-ref") == refs


def test_ensure_new_branch_refuses_a_name_clashing_with_a_ref_directory(clean_repo: Path) -> None:
    """'feature' cannot be created while 'feature/x' exists; say so up front."""
    run_git(clean_repo, "branch", "feature/x")
    with pytest.raises(RepoError):
        ensure_new_branch(open_repo(clean_repo), "feature")
