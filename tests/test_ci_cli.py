"""`cwm-agent ci` skips, refusals and bad input: each is one line and its own exit
code, decided before any container starts (so no Docker is needed), against a
local HTTP server standing in for the GitHub API."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.github_api import FakeGitHub, serve

TOKEN = "ghs_clitoken"
EVENT = Path(__file__).parent.parent / "examples" / "github" / "event-issue-labeled.json"


@pytest.fixture
def api() -> Iterator[FakeGitHub]:
    fake = FakeGitHub(slug="acme/calc", token=TOKEN)
    fake.add_issue(7, "median() is wrong", "details")
    with serve(fake):
        yield fake


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    (path / "a.txt").write_text("a\n")
    git = ["git", "-c", "user.name=d", "-c", "user.email=d@example.invalid", "-C", str(path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "start"], check=True)
    return path


def ci(
    repo: Path, api: FakeGitHub, event: dict[str, Any] | None, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    settings = {"GITHUB_TOKEN": TOKEN, "GITHUB_EVENT_NAME": "issues", **env}
    if event is not None:
        path = repo.parent / "event.json"
        path.write_text(json.dumps(event))
        settings["GITHUB_EVENT_PATH"] = str(path)
    return run_cli(
        "ci",
        "--repo",
        str(repo),
        "--api-url",
        api.url,
        "--model",
        "replay:/none",
        *args,
        env=settings,
    )


def labeled() -> dict[str, Any]:
    return json.loads(EVENT.read_text())


def commented(association: str) -> dict[str, Any]:
    event = labeled()
    del event["label"]
    event |= {
        "action": "created",
        "comment": {
            "body": "/cwm-agent fix",
            "author_association": association,
            "user": {"login": "eve"},
        },
    }
    return event


@pytest.mark.parametrize(
    ("case", "code", "line", "calls"),
    [
        ("other label", 3, "skipped: label 'bug' is not the trigger label 'cwm-agent'", 0),
        ("outsider", 4, "refused: eve is CONTRIBUTOR; only OWNER, MEMBER, COLLABORATOR may", 0),
        ("closed", 5, "skipped: issue #7 is closed", 1),
        ("locked", 6, "skipped: issue #7 is locked", 1),
        ("label removed", 3, "skipped: the label 'cwm-agent' was removed from #7", 1),
        ("linked", 7, "skipped: issue #7 is already linked to open pull request #55", 3),
    ],
)
def test_skips_and_refusals(
    case: str, code: int, line: str, calls: int, repo: Path, api: FakeGitHub
) -> None:
    event, name = labeled(), "issues"
    if case == "other label":
        event["label"] = {"name": "bug"}
    elif case == "outsider":
        event, name = commented("CONTRIBUTOR"), "issue_comment"
    elif case == "closed":
        api.issues[7]["state"] = "closed"
    elif case == "locked":
        api.issues[7]["locked"] = True
    elif case == "label removed":
        api.issues[7]["labels"] = []
    elif case == "linked":
        pull = {"number": 55, "title": "my fix", "state": "open", "pull_request": {}}
        api.timeline[7] = [{"event": "cross-referenced", "source": {"issue": pull}}]
    done = ci(repo, api, event, GITHUB_EVENT_NAME=name)
    assert done.returncode == code, done.stderr + done.stdout
    assert done.stdout.startswith(line) and done.stdout.count("\n") == 1
    assert done.stderr == ""
    assert len(api.requests) == calls and {r.method for r in api.requests} <= {"GET"}


def test_a_config_file_sets_the_trigger_and_a_flag_wins(
    repo: Path, api: FakeGitHub, tmp_path: Path
) -> None:
    config = tmp_path / "ci.toml"
    config.write_text('label = "fix-me"\nmax_turns = 12\nprotect = ["*.lock"]\n')
    done = ci(repo, api, labeled(), "--config", str(config))
    assert done.returncode == 3, done.stderr + done.stdout
    assert done.stdout == "skipped: label 'cwm-agent' is not the trigger label 'fix-me'\n"
    won = ci(repo, api, labeled(), "--config", str(config), "--label", "other")
    assert won.stdout == "skipped: label 'cwm-agent' is not the trigger label 'other'\n"
    assert api.requests == []


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no token", "no token: set GITHUB_TOKEN (or name the variable with --token-env)"),
        ("bad token", "GitHub API GET /issues/7: 401 Bad credentials: check the token"),
        ("no issue", "no issue: run in a GitHub workflow (GITHUB_EVENT_PATH), or give"),
        ("slug only", "give both --repo-slug OWNER/NAME and --issue N, or neither"),
        ("bad slug", "invalid slug: String should match pattern"),
        ("missing issue", "GitHub API GET /issues/8: 404 Not Found"),
        ("bad event", "is not a GitHub event payload"),
        ("issue file", "--issue-file needs --output-only"),
        ("not a repo", "is not a git repository"),
    ],
)
def test_bad_input_is_one_line(case: str, message: str, repo: Path, api: FakeGitHub) -> None:
    event: dict[str, Any] | None = labeled()
    args: list[str] = []
    env: dict[str, str] = {}
    target = repo
    if case == "no token":
        env["GITHUB_TOKEN"] = ""
    elif case == "bad token":
        env["GITHUB_TOKEN"] = "ghs_wrong_secret"
    elif case == "no issue":
        event = None
        env["GITHUB_EVENT_PATH"] = ""
    elif case == "slug only":
        args = ["--repo-slug", "acme/calc"]
    elif case == "bad slug":
        args = ["--repo-slug", "acme calc", "--issue", "7"]
    elif case == "missing issue":
        args = ["--repo-slug", "acme/calc", "--issue", "8"]
    elif case == "bad event":
        (repo.parent / "junk.json").write_text("[1, 2")
        event, env["GITHUB_EVENT_PATH"] = None, str(repo.parent / "junk.json")
    elif case == "issue file":
        args = ["--issue-file", str(repo / "a.txt")]
    elif case == "not a repo":
        target = repo.parent
    done = ci(target, api, event, *args, **env)
    assert done.returncode == 1, done.stderr + done.stdout
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "ghs_wrong_secret" not in done.stderr
    assert [r.method for r in api.requests if r.method != "GET"] == []
