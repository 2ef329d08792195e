"""The CI bot's decisions, without Docker: the trigger/permission matrix, issue
checks, the patch guard rails (through the real `git apply`), and the push's
credentials."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import git
import pytest

from cwm_agent.ci import ExitCode, Stop
from cwm_agent.ci.event import Event, Trigger, TriggerRules, check_issue, decide, has_command
from cwm_agent.ci.github import Issue
from cwm_agent.ci.guards import (
    FileChange,
    Limits,
    changes,
    check_no_secret,
    check_paths,
    check_size,
    matches,
)
from cwm_agent.ci.push import auth_env
from cwm_agent.gitrepo import commit_patch
from tests.helpers import GIT

RULES = TriggerRules()


def payload(**parts: Any) -> Event:
    base: dict[str, Any] = {
        "issue": {"number": 7, "title": "median", "labels": [{"name": "cwm-agent"}]},
        "repository": {"full_name": "acme/calc", "default_branch": "main"},
        "sender": {"login": "alice"},
    }
    return Event.model_validate({**base, **parts})


def comment(body: str, association: str, **issue: Any) -> Event:
    event = payload(action="created", comment={"body": body, "author_association": association})
    if issue:
        assert event.issue is not None
        event.issue = event.issue.model_copy(update=issue)
    return event


@pytest.mark.parametrize(
    ("name", "event", "code"),
    [
        ("issues", payload(action="labeled", label={"name": "cwm-agent"}), None),
        ("issues", payload(action="labeled", label={"name": "bug"}), ExitCode.NOT_A_TRIGGER),
        ("issues", payload(action="opened"), ExitCode.NOT_A_TRIGGER),
        (
            "issues",
            payload(action="unlabeled", label={"name": "cwm-agent"}),
            ExitCode.NOT_A_TRIGGER,
        ),
        ("issue_comment", comment("/cwm-agent fix", "OWNER"), None),
        ("issue_comment", comment("/cwm-agent fix", "MEMBER"), None),
        ("issue_comment", comment("looks hard\n  /cwm-agent fix please", "COLLABORATOR"), None),
        ("issue_comment", comment("/cwm-agent fix", "CONTRIBUTOR"), ExitCode.NOT_ALLOWED),
        ("issue_comment", comment("/cwm-agent fix", "FIRST_TIMER"), ExitCode.NOT_ALLOWED),
        ("issue_comment", comment("/cwm-agent fix", "NONE"), ExitCode.NOT_ALLOWED),
        ("issue_comment", comment("please /cwm-agent fix", "OWNER"), ExitCode.NOT_A_TRIGGER),
        ("issue_comment", comment("/cwm-agent fixed it?", "OWNER"), ExitCode.NOT_A_TRIGGER),
        (
            "issue_comment",
            comment("/cwm-agent fix", "OWNER", pull_request={"url": "x"}),
            ExitCode.NOT_A_TRIGGER,
        ),
        (
            "issue_comment",
            payload(action="edited", comment={"body": "/cwm-agent fix"}),
            ExitCode.NOT_A_TRIGGER,
        ),
        ("push", payload(action=None), ExitCode.NOT_A_TRIGGER),
        ("issues", Event(action="labeled"), ExitCode.NOT_A_TRIGGER),
    ],
)
def test_trigger_and_permission_matrix(name: str, event: Event, code: ExitCode | None) -> None:
    if code is None:
        trigger = decide(name, event, RULES)
        assert (trigger.slug, trigger.issue, trigger.base) == ("acme/calc", 7, "main")
        assert trigger.label == ("cwm-agent" if name == "issues" else None)
    else:
        with pytest.raises(Stop) as stop:
            decide(name, event, RULES)
        assert stop.value.code == code
        assert "\n" not in str(stop.value)


def test_custom_label_and_command_and_the_refusal_line() -> None:
    rules = TriggerRules(label="bot-fix", command="/fixit", allowed=("OWNER",))
    assert decide("issues", payload(action="labeled", label={"name": "bot-fix"}), rules).why == (
        "label 'bot-fix' added by alice"
    )
    with pytest.raises(Stop) as stop:
        decide("issue_comment", comment("/fixit", "MEMBER"), rules)
    assert str(stop.value) == "refused: alice is MEMBER; only OWNER may ask for a fix"
    assert has_command("/fixit\n", "/fixit") and not has_command("/fixit-now", "/fixit")


@pytest.mark.parametrize(
    ("issue", "label", "code", "message"),
    [
        ({"state": "closed"}, None, ExitCode.CLOSED, "skipped: issue #7 is closed"),
        ({"locked": True}, None, ExitCode.LOCKED, "skipped: issue #7 is locked"),
        (
            {"pull_request": {}},
            None,
            ExitCode.CLOSED,
            "skipped: #7 is a pull request, not an issue",
        ),
        ({"labels": []}, "cwm-agent", ExitCode.NOT_A_TRIGGER, "label 'cwm-agent' was removed"),
    ],
)
def test_issues_not_to_work_on(
    issue: dict[str, Any], label: str | None, code: ExitCode, message: str
) -> None:
    fetched = Issue.model_validate({"number": 7, "title": "t", **issue})
    with pytest.raises(Stop) as stop:
        check_issue(fetched, Trigger(slug="a/b", issue=7, label=label, why="test"))
    assert stop.value.code == code and message in str(stop.value)
    check_issue(Issue(number=7, title="t", labels=[]), Trigger(slug="a/b", issue=7, why="hand"))


@pytest.fixture
def repo(tmp_path: Path) -> git.Repo:
    """A repository whose one commit holds `a.py`, `b.py` and `.github/tool.py`."""
    for name in ("a.py", "b.py", ".github/tool.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("a\n")
    subprocess.run([*GIT, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "commit", "-qm", "start"], cwd=tmp_path, check=True)
    return git.Repo(tmp_path)


def changed(repo: git.Repo, patch: str) -> list[FileChange]:
    """What the guards see once `patch` is committed on HEAD, as the bot does."""
    start = repo.head.commit.hexsha
    return changes(repo, start, commit_patch(repo, start, patch.encode(), "fix"))


def edit(path: str, new: list[str]) -> str:
    """Replace the one line `a` of `path` with the lines `new`."""
    added = "".join(f"+{line}\n" for line in new)
    return (
        f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n"
        f"@@ -1 +1,{len(new)} @@\n-a\n{added}"
    )


def create(path: str) -> str:
    return (
        f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n"
        "@@ -0,0 +1 @@\n+x\n"
    )


@pytest.mark.parametrize(
    ("path", "protect", "refused"),
    [
        (".github/workflows/ci.yml", [], True),
        (".GitHub/workflows/ci.yml", [], True),
        ("pkg/.github/dependabot.yml", [], True),
        (".gitlab-ci.yml", [], True),
        (".circleci/config.yml", [], True),
        ("deploy/Jenkinsfile", [], True),
        (".travis.yml", [], True),
        ("azure-pipelines.yml", [], True),
        ("src/github.py", [], False),
        ("docs/travis.yml.md", [], False),
        ("secrets/prod.env", ["secrets/"], True),
        ("src/a/b/settings.py", ["src/**/settings.py"], True),
        ("src/settings.py", ["src/**/settings.py"], True),
        ("src/a/settings.py", ["src/*.py"], False),
        ("setup.cfg", ["*.cfg"], True),
    ],
)
def test_protected_paths(path: str, protect: list[str], refused: bool, repo: git.Repo) -> None:
    found = [c.path for c in changed(repo, create(path))]
    assert found == [path]
    if refused:
        with pytest.raises(Stop) as stop:
            check_paths(found, protect)
        assert stop.value.code == ExitCode.PROTECTED and path in str(stop.value)
    else:
        check_paths(found, protect)


def test_renames_and_quoted_paths_cannot_hide(repo: git.Repo) -> None:
    move_out = (
        "diff --git a/.github/tool.py b/tool.py\nsimilarity index 100%\n"
        "rename from .github/tool.py\nrename to tool.py\n"
    )
    quoted = (
        'diff --git "a/.github/t\\303\\251st.yml" "b/.github/t\\303\\251st.yml"\n'
        'new file mode 100644\n--- /dev/null\n+++ "b/.github/t\\303\\251st.yml"\n'
        "@@ -0,0 +1 @@\n+x\n"
    )
    assert [c.path for c in changed(repo, move_out)] == [".github/tool.py", "tool.py"]
    assert [c.path for c in changed(repo, quoted)] == [".github/tést.yml"]
    assert matches(".github/tést.yml", ".github/")


def test_size_limits(repo: git.Repo) -> None:
    patch = edit("a.py", ["b"]) + edit("b.py", ["y", "z"])
    found = changed(repo, patch)
    size = len(patch.encode())
    check_size(found, patch.encode(), Limits(max_files=2, max_lines=5, max_bytes=size))
    for limits, words in [
        (Limits(max_files=1), "2 files, over the limit of 1 (--max-files)"),
        (Limits(max_lines=4), "5 changed lines, over the limit of 4 (--max-lines)"),
        (Limits(max_bytes=100), f"{size} bytes, over the limit of 100 (--max-bytes)"),
    ]:
        with pytest.raises(Stop) as stop:
            check_size(found, patch.encode(), limits)
        assert stop.value.code == ExitCode.TOO_LARGE and words in str(stop.value)


def test_secret_never_published() -> None:
    check_no_secret("ghs_abc", {"text": "all clear"})
    check_no_secret(None, {"text": "ghs_abc"})
    with pytest.raises(Stop) as stop:
        check_no_secret("ghs_abc", {"patch": "ok", "text": "token=ghs_abc"})
    assert stop.value.code == ExitCode.SECRET and "ghs_abc" not in str(stop.value)


def test_push_credentials_live_only_in_the_git_environment(tmp_path: Path) -> None:
    """The extra header reaches git through the environment and nowhere on disk."""
    env = auth_env("https://github.com/", "ghs_secret")
    assert env["GIT_CONFIG_KEY_0"] == "http.https://github.com/.extraheader"
    repo = tmp_path / "r"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    seen = subprocess.run(
        ["git", "config", "--get", "http.https://github.com/.extraheader"],
        cwd=repo,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert seen.startswith("AUTHORIZATION: basic ")
    assert "ghs_secret" not in (repo / ".git" / "config").read_text()
    assert auth_env("https://github.com", None) == {"GIT_TERMINAL_PROMPT": "0"}
