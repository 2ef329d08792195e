"""`cwm-agent ci` end to end: the real CLI, real containers, a real bare remote and
a local HTTP server standing in for the GitHub API. The model is the only double
(`replay:` files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from cwm_agent.sandbox import LABEL
from tests.conftest import run_cli
from tests.github_api import Failure, FakeGitHub, serve
from tests.helpers import CALC_EXAMPLE as EXAMPLE
from tests.helpers import EXAMPLES, call, committed_copy, git

pytestmark = pytest.mark.docker

EVENT = EXAMPLES / "github" / "event-issue-labeled.json"
TOKEN = "ghs_testtoken0123456789abcdef"
BRANCH = "cwm-agent/issue-7"
FIX = json.loads((EXAMPLE / "replay.json").read_text())
PROBE = "Let me look around first.\n</think>\n\n<tool: bash>\nenv; ls /sys/class/net\n</tool>"


def refs(repo: Path) -> dict[str, str]:
    lines = git(repo, "for-each-ref", "--format=%(refname) %(objectname)").split("\n")
    return dict(line.split(" ") for line in lines if line)


def submit_after(script: str) -> list[str]:
    """Replies that run `script` (which writes /tmp/fix.patch), submit it and sum up."""
    return [
        call("bash", script),
        call("submit", "/tmp/fix.patch"),
        "Done.\n</think>\n\n## Summary\n\nSubmitted.",
    ]


class Setup:
    """A checkout of the calc example, its bare origin and the API, wired to the CLI."""

    def __init__(self, tmp: Path, api: FakeGitHub, image: str, client: docker.DockerClient) -> None:
        self.tmp, self.api, self.image, self.client = tmp, api, image, client
        self.repo = committed_copy(EXAMPLE / "repo", tmp / "calc")
        self.remote = tmp / "origin.git"
        subprocess.run(["git", "init", "-q", "--bare", str(self.remote)], check=True)
        git(self.repo, "push", "-q", str(self.remote), "main")
        self.start = git(self.repo, "rev-parse", "HEAD").strip()
        self.runs = 0

    def event(self, name: str, payload: dict[str, object]) -> dict[str, str]:
        path = self.tmp / f"event-{len(list(self.tmp.glob('event-*')))}.json"
        path.write_text(json.dumps(payload))
        return {"GITHUB_EVENT_PATH": str(path), "GITHUB_EVENT_NAME": name}

    def ci(
        self, replies: list[str], *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        self.runs += 1
        self.output = self.tmp / f"run-{self.runs}"
        model = self.tmp / f"replay-{self.runs}.json"
        model.write_text(json.dumps(replies))
        base = {"GITHUB_TOKEN": TOKEN, "GITHUB_EVENT_PATH": str(EVENT)}
        base["GITHUB_EVENT_NAME"] = "issues"
        args = [
            "ci",
            "--repo",
            str(self.repo),
            "--api-url",
            self.api.url,
            "--remote",
            str(self.remote),
            "--image",
            self.image,
            "--model",
            f"replay:{model}",
            "--output",
            str(self.output),
            *args,
        ]
        process = subprocess.Popen(
            [sys.executable, "-m", "cwm_agent.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200", **base, **(env or {})},
        )
        out, err = process.communicate(timeout=300)
        mine = self.client.containers.list(
            all=True, filters={"label": f"{LABEL}.pid={process.pid}"}
        )
        assert mine == [], "the run left containers behind"
        return subprocess.CompletedProcess(args, process.returncode, out, err)


@pytest.fixture
def setup(tmp_path: Path, base_image: str, client: docker.DockerClient) -> Iterator[Setup]:
    api = FakeGitHub(slug="acme/calc", token=TOKEN)
    issue = (EXAMPLE / "issue.md").read_text()
    title, _, body = issue.partition("\n")
    api.add_issue(7, title, body.strip())
    with serve(api):
        yield Setup(tmp_path, api, base_image, client)


def test_label_opens_a_draft_pull_request_and_a_rerun_updates_it(setup: Setup) -> None:
    before = refs(setup.remote)
    test_cmd = "! env | grep -i token && python3 -m unittest -q"
    done = setup.ci([PROBE, *FIX], "--test-cmd", test_cmd)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "opened draft pull request #100: https://github.test/acme/calc/pull/100" in done.stdout

    # Exactly these requests, all authenticated; the base comes from the event.
    assert setup.api.calls() == [
        ("GET", "/repos/acme/calc/issues/7"),
        ("GET", f"/repos/acme/calc/pulls?head=acme:{BRANCH}&state=open"),
        ("GET", "/repos/acme/calc/issues/7/timeline?per_page=100"),
        ("POST", "/repos/acme/calc/pulls"),
    ]
    assert {r.authorization for r in setup.api.requests} == {f"Bearer {TOKEN}"}
    created = setup.api.requests[-1].body
    assert {k: created[k] for k in ("title", "head", "base", "draft")} == {
        "title": "Fix #7: median() is wrong for an even number of values",
        "head": BRANCH,
        "base": "main",
        "draft": True,
    }
    body = created["body"]
    assert body.startswith("Fixes #7.\n\nDraft opened by cwm-agent (label 'cwm-agent' added by")
    assert "## Model summary\n\n### Issue Summary\n\n`median()` returned the upper" in body
    assert f"`{test_cmd}` passed on the patched tree in a fresh sandbox (exit 0," in body
    assert "\nOK\n" in body
    assert (
        "+1 -1" in body
        and "trajectory: `trajectory.json` in the run's outputs; its `index.html`" in body
    )
    assert (setup.output / "summary.md").read_text() == body + "\n"

    # The remote got one new branch: the start commit plus exactly the patch.
    after = refs(setup.remote)
    commit = after.pop(f"refs/heads/{BRANCH}")
    assert after == before
    assert git(setup.remote, "rev-parse", f"{commit}^").strip() == setup.start
    patch = (setup.output / "patch.diff").read_text()
    assert git(setup.remote, "diff", setup.start, commit) == patch
    assert git(setup.remote, "log", "-1", "--format=%s", commit).startswith("cwm-agent: median()")
    # ...pushed by the host: no branch, remote or credential added to the checkout.
    assert git(setup.repo, "branch", "--format=%(refname:short)").split() == ["main"]
    assert TOKEN not in (setup.repo / ".git" / "config").read_text()
    assert git(setup.repo, "status", "--porcelain") == ""

    # Inside the sandbox: no token, no network but loopback.
    trajectory = json.loads((setup.output / "trajectory.json").read_text())
    probe = next(m for m in trajectory["messages"] if m["role"] == "tool: bash")
    environment = probe["tool_result"]["output"]
    assert "PATH=" in environment
    assert TOKEN not in environment and "GITHUB" not in environment
    assert environment.rstrip().endswith("\nlo")
    result = json.loads((setup.output / "result.json").read_text())
    assert result["outcome"] == "done" and result["commit"] == commit
    assert result["files"] == ["calc.py"] and result["tests"]["passed"] is True

    # A maintainer asks again: the branch is force-pushed and the PR updated, not duplicated.
    setup.api.requests.clear()
    setup.api.timeline[7] = [
        {
            "event": "cross-referenced",
            "source": {"issue": {**setup.api.pulls[0], "title": "x", "pull_request": {}}},
        }
    ]
    again = [*FIX[:-1], FIX[-1].replace("## Issue Summary", "## Issue Summary (again)")]
    comment = {
        "action": "created",
        "issue": setup.api.issues[7],
        "comment": {
            "body": "/cwm-agent fix",
            "author_association": "MEMBER",
            "user": {"login": "bob"},
        },
        "repository": {"full_name": "acme/calc"},
    }
    done = setup.ci(again, env=setup.event("issue_comment", comment))
    assert done.returncode == 0, done.stderr + done.stdout
    assert "updated pull request #100" in done.stdout
    assert setup.api.calls() == [
        ("GET", "/repos/acme/calc/issues/7"),
        ("GET", f"/repos/acme/calc/pulls?head=acme:{BRANCH}&state=open"),
        ("GET", "/repos/acme/calc/issues/7/timeline?per_page=100"),
        ("PATCH", "/repos/acme/calc/pulls/100"),
    ]
    update = setup.api.requests[-1].body
    assert update["title"] == created["title"]
    assert "'/cwm-agent fix' from bob (MEMBER)" in update["body"]
    assert "### Issue Summary (again)" in update["body"]
    assert len(setup.api.pulls) == 1
    moved = refs(setup.remote)
    assert moved.pop(f"refs/heads/{BRANCH}") != commit and moved == before


def test_github_failing_part_way_is_one_line_and_a_rerun_finishes(setup: Setup) -> None:
    """The first calls fail and are retried; then opening the pull request keeps failing
    after the push: one line, and a re-run pushes again and opens exactly one."""
    transient = {"Retry-After": "0"}
    setup.api.failures = [Failure(502, transient), Failure(503, transient)]
    setup.api.failures += [Failure(502, transient, on="POST /repos/acme/calc/pulls")] * 5
    done = setup.ci(FIX)
    assert done.returncode == 1, done.stderr + done.stdout
    assert done.stderr.splitlines() == [
        "error: GitHub API POST /pulls: 502 failed (5 attempt(s)): try again in a while; "
        "a re-run finds the branch and pull request this one made"
    ]
    assert setup.api.calls()[:3] == [("GET", "/repos/acme/calc/issues/7")] * 3
    assert f"refs/heads/{BRANCH}" in refs(setup.remote) and setup.api.pulls == []

    again = setup.ci(FIX)
    assert again.returncode == 0, again.stderr + again.stdout
    assert "opened draft pull request #100" in again.stdout
    assert len(setup.api.pulls) == 1


BOGUS = "diff --git a/gone.py b/gone.py\n--- a/gone.py\n+++ b/gone.py\n@@ -1 +1 @@\n-a\n+b\n"
PATCH_ALL = "git add -A && git diff --cached > /tmp/fix.patch"


@pytest.mark.parametrize(
    ("case", "code", "line"),
    [
        ("no fix", 8, "no fix: no patch was submitted; the run ended max_turns (reached 2"),
        ("time cap", 8, "run ended time_limit (reached the wall-time cap of 0.6s)"),
        ("does not apply", 9, "refused: the patch does not apply to"),
        ("ci config", 10, "refused: the patch touches .github/workflows/ci.yml"),
        ("protected glob", 10, "refused: the patch touches calc.py (protected by 'calc.*')"),
        ("too large", 11, "refused: the patch has 2 changed lines, over the limit of 1"),
        ("tests fail", 12, "refused: `python3 -m unittest -q` fails on the patched tree (exit 1)"),
        ("secret", 13, "refused: the token appears in the patch; nothing posted"),
    ],
)
def test_guard_rails_refuse_and_say_so(setup: Setup, case: str, code: int, line: str) -> None:
    replies, args = FIX, []
    if case == "no fix":
        args = ["--max-turns", "2"]
    elif case == "time cap":
        replies, args = [call("bash", "sleep 2"), *FIX], ["--max-minutes", "0.01"]
    elif case == "does not apply":
        replies = submit_after(f"printf %s '{BOGUS}' > /tmp/fix.patch")
    elif case == "ci config":
        workflow = ".github/workflows/ci.yml"
        replies = submit_after(f"mkdir -p .github/workflows && echo x > {workflow} && {PATCH_ALL}")
    elif case == "protected glob":
        args = ["--protect", "calc.*"]
    elif case == "too large":
        args = ["--max-lines", "1"]
    elif case == "tests fail":
        replies = submit_after(f"echo more >> README.md && {PATCH_ALL}")
        args = ["--test-cmd", "python3 -m unittest -q"]
    elif case == "secret":
        replies = submit_after(f"echo {TOKEN} > leaked.txt && {PATCH_ALL}")
    before = refs(setup.remote)
    done = setup.ci(replies, *args)
    assert done.returncode == code, done.stderr + done.stdout
    assert line in done.stdout and "Traceback" not in done.stderr + done.stdout
    assert refs(setup.remote) == before, "nothing is pushed"
    result = json.loads((setup.output / "result.json").read_text())
    assert result["exit_code"] == code and line in result["message"]
    posts = [r for r in setup.api.requests if r.method != "GET"]
    if case == "secret":
        assert posts == [] and (setup.output / "summary.md").read_text() == ""
        files = [path for path in setup.output.rglob("*") if path.is_file()]
        assert not [path for path in files if TOKEN.encode() in path.read_bytes()]
        assert (setup.output / "result.json") in files  # the record stays
        return
    assert [(r.method, r.path) for r in posts] == [("POST", "/repos/acme/calc/issues/7/comments")]
    comment = posts[0].body["body"]
    assert comment.startswith("cwm-agent did not open a pull request: ") and line in comment
    assert "## What was tried\n\n- model `replay:" in comment
    finished = case not in ("no fix", "time cap")  # an unfinished run has no summary to show
    assert ("## The model's summary\n\n### " in comment) == finished


def test_the_token_never_reaches_the_artifact(setup: Setup) -> None:
    """The model writes the token only into its own turns (not the patch, not the
    post): the pull request opens, and no file of the uploaded folder holds it."""
    done = setup.ci([call("bash", f"echo {TOKEN} > /dev/null"), *FIX])
    assert done.returncode == 0, done.stderr + done.stdout
    files = [path for path in setup.output.rglob("*") if path.is_file()]
    assert {"trajectory.json", "result.json", "index.html"} <= {path.name for path in files}
    assert not [path for path in files if TOKEN.encode() in path.read_bytes()]
    assert "[token removed]" in (setup.output / "trajectory.json").read_text()


def test_dry_run_on_the_fixture_event_writes_nothing(setup: Setup) -> None:
    before = refs(setup.remote)
    done = setup.ci(FIX, "--dry-run", env={"GITHUB_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr + done.stdout
    assert {r.method for r in setup.api.requests} == {"GET"}
    assert refs(setup.remote) == before
    out = done.stdout
    assert "fixing #7: median() is wrong for an even number of values (label 'cwm-agent'" in out
    assert "would push " in out and f"to {setup.remote} as {BRANCH} (forced)" in out
    assert "would open a draft pull request: Fix #7: median() is wrong for an even" in out
    assert "Fixes #7.\n\nDraft opened by cwm-agent" in out
    assert "fixed: 1 file(s) on cwm-agent/issue-7 (dry run: nothing pushed or posted)" in out


def test_output_only_needs_no_github(tmp_path: Path, base_image: str) -> None:
    repo = committed_copy(EXAMPLE / "repo", tmp_path / "calc")
    model = tmp_path / "replay.json"
    model.write_text(json.dumps(FIX))
    output = tmp_path / "out"
    done = run_cli(
        "ci",
        "--output-only",
        "--repo",
        str(repo),
        "--issue-file",
        str(EXAMPLE / "issue.md"),
        "--model",
        f"replay:{model}",
        "--image",
        base_image,
        "--output",
        str(output),
        "--test-cmd",
        "python3 -m unittest -q",
        env={"GITHUB_TOKEN": "", "GITHUB_EVENT_PATH": ""},
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "fixed: 1 file(s) on cwm-agent/issue-1 (outputs only)" in done.stdout
    assert {p.name for p in output.iterdir()} == {
        "patch.diff",
        "summary.md",
        "result.json",
        "trajectory.json",
        "index.html",
    }
    assert "ci: done" in (output / "index.html").read_text()  # the artifact's page of the run
    result = json.loads((output / "result.json").read_text())
    assert result["output_only"] is True and result["tests"]["passed"] is True
    assert result["fix"]["patch_stats"]["files"] == 1
    assert "## Model summary\n\n### Issue Summary" in (output / "summary.md").read_text()
    assert len(git(repo, "branch", "--format=%(refname)").split()) == 1, "no branch made"
