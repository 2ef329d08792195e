"""`cwm-agent fix` end to end: the real CLI, real containers, a repository with a real bug.

The model is the only double: `replay:` files stand in for CWM.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from cwm_agent.fix import patch_stats
from cwm_agent.sandbox import LABEL
from tests.conftest import run_cli as cli
from tests.conftest import start_cli, test_image
from tests.helpers import CALC_EXAMPLE as EXAMPLE
from tests.helpers import call, committed_copy, fix_args, fix_containers, git

pytestmark = pytest.mark.docker


@pytest.fixture
def calc_repo(tmp_path: Path) -> Path:
    """The bundled example: `median()` is wrong for even counts, one test fails."""
    return committed_copy(EXAMPLE / "repo", tmp_path / "calc")


def replay(tmp_path: Path, replies: list[str]) -> str:
    path = tmp_path / "replies.json"
    path.write_text(json.dumps(replies))
    return f"replay:{path}"


def tree_state(repo: Path) -> dict[str, object]:
    """Everything of the user's that `fix` must leave alone."""
    files = {
        str(p.relative_to(repo)): p.read_bytes()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and ".git" not in p.parts
    }
    return {
        "files": files,
        "status": git(repo, "status", "--porcelain"),
        "index": git(repo, "ls-files", "-s"),
        "head": git(repo, "rev-parse", "HEAD"),
        "branch": git(repo, "branch", "--show-current"),
        "stash": git(repo, "stash", "list"),
    }


def test_example_fix_end_to_end_with_branch(
    calc_repo: Path, base_image: str, tmp_path: Path, client: docker.DockerClient
) -> None:
    # The user is mid-work: a staged change, an edit, an untracked file, a stash entry.
    (calc_repo / "notes.txt").write_text("scratch\n")
    git(calc_repo, "add", "notes.txt")
    git(calc_repo, "stash", "push", "-q", "-m", "earlier work")
    (calc_repo / "README").write_text("wip readme\n")
    git(calc_repo, "add", "README")
    (calc_repo / "test_calc.py").write_text((calc_repo / "test_calc.py").read_text() + "\n# wip\n")
    before = tree_state(calc_repo)

    output = tmp_path / "run"
    args = fix_args(calc_repo, base_image, output, f"replay:{EXAMPLE / 'replay.json'}")
    done = cli(*args, "--branch", "cwm-agent/fix-median")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "fixed: 1 file(s), +1 -1 in 9 turns" in done.stdout
    assert "turn   4 edit calc.py" in done.stdout
    assert tree_state(calc_repo) == before, "the user's tree, index, branch and stash"
    assert fix_containers(client) == []

    result = json.loads((output / "result.json").read_text())
    assert result["status"] == "finished" and result["success"] is True
    assert result["patch_applies"] is True and result["turns"] == 9
    rollout = json.loads((output / "trajectory.json").read_text())
    assert result["usage"] == {
        "prompt_tokens": rollout["prompt_tokens"],
        "completion_tokens": rollout["completion_tokens"],
        "model_s": round(rollout["generation_s"], 3),
        "sandbox_s": round(rollout["tools_s"], 3),
    }
    assert result["usage"]["prompt_tokens"] > result["usage"]["completion_tokens"] > 0
    assert result["usage_by_part"] is None  # one rollout
    patch = (output / "patch.diff").read_bytes()
    assert result["patch_stats"] == {
        "files": 1,
        "additions": 1,
        "deletions": 1,
        "bytes": len(patch),
    }
    assert result["branch"] == "cwm-agent/fix-median"

    trajectory = json.loads((output / "trajectory.json").read_text())
    roles = [m["role"] for m in trajectory["messages"]]
    assert roles[:2] == ["system", "user"]
    assert roles.count("assistant") == 9
    format_error = trajectory["messages"][7]
    assert format_error["role"] == "user"
    assert format_error["content"] == (
        "FormatError: Expected one tool call, but found 2: edit, bash. "
        "Ensure only one <tool:...></tool> block is present in the response."
    )
    failed_edit = next(m for m in trajectory["messages"] if m["role"] == "tool: edit")
    assert failed_edit["tool_result"]["ok"] is False
    assert "with indentations preserved." in failed_edit["content"]
    assert (
        "</output>\n\n<budget>\n* Remaining turns: 124\n* Remaining tokens: "
        in (failed_edit["content"])
    )
    assert trajectory["submission"].encode() == patch

    # The patch makes the failing test pass on a clean copy of the start commit.
    clean = tmp_path / "clean"
    subprocess.run(["git", "clone", "-q", str(calc_repo), str(clean)], check=True)
    failing = subprocess.run(
        [sys.executable, "-m", "unittest", "-q"], cwd=clean, capture_output=True, text=True
    )
    assert failing.returncode != 0
    git(clean, "apply", str(output / "patch.diff"))
    passing = subprocess.run(
        [sys.executable, "-m", "unittest", "-q"], cwd=clean, capture_output=True, text=True
    )
    assert passing.returncode == 0, passing.stderr

    # The branch holds exactly start + patch.
    assert git(calc_repo, "rev-parse", "cwm-agent/fix-median^") == before["head"]
    assert git(calc_repo, "diff", "HEAD", "cwm-agent/fix-median").encode() == patch
    assert git(calc_repo, "log", "-1", "--format=%s", "cwm-agent/fix-median").startswith(
        "cwm-agent: median() is wrong"
    )


def test_include_uncommitted_starts_from_working_tree(
    calc_repo: Path, base_image: str, tmp_path: Path
) -> None:
    (calc_repo / "calc.py").write_text((calc_repo / "calc.py").read_text() + "\nLOCAL = 1\n")
    model = replay(
        tmp_path,
        [call("bash", "grep -c LOCAL calc.py; git log --oneline | wc -l; git status --short")],
    )
    done = cli(
        *fix_args(calc_repo, base_image, tmp_path / "run", model),
        "--include-uncommitted",
        "--json",
    )
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert "uncommitted changes" in result["start"]
    trajectory = json.loads((tmp_path / "run" / "trajectory.json").read_text())
    bash = next(m for m in trajectory["messages"] if m["role"] == "tool: bash")
    assert bash["tool_result"]["output"] == "1\n1\n"  # the edit is there, as a clean commit


def test_max_turns_and_bash_timeout(calc_repo: Path, base_image: str, tmp_path: Path) -> None:
    model = replay(
        tmp_path,
        [
            call("bash", "cd /tmp && sleep 30"),
            call("bash", "pwd"),
            call("bash", "echo never runs"),
        ],
    )
    config = tmp_path / "fix.toml"  # the budgets from a file, but a flag wins over it
    config.write_text("max_turns = 9\nsession_timeout = 1\nquiet = true\n")
    done = cli(
        *fix_args(calc_repo, base_image, tmp_path / "run", model),
        *("--config", str(config), "--max-turns", "3"),
    )
    assert done.returncode == 1
    assert done.stdout.startswith("no fix: max_turns (reached 3 turns)")  # --quiet: the outcome
    trajectory = json.loads((tmp_path / "run" / "trajectory.json").read_text())
    outputs = [m["tool_result"]["output"] for m in trajectory["messages"] if m["tool_result"]]
    assert outputs == [
        "The current session has terminated due to timeout. A fresh session has started "
        "with the current working directory reset to default.",
        "/testbed\n",
    ]
    assert trajectory["status"] == "max_turns" and trajectory["turns"] == 3
    assert "1-second session timeout" in trajectory["messages"][0]["content"]
    assert "for at most 3 turns" in trajectory["messages"][0]["content"]
    assert (tmp_path / "run" / "patch.diff").read_bytes() == b""


def test_patch_that_does_not_apply_is_reported(
    calc_repo: Path, base_image: str, tmp_path: Path
) -> None:
    bogus = "diff --git a/gone.py b/gone.py\n--- a/gone.py\n+++ b/gone.py\n@@ -1 +1 @@\n-a\n+b\n"
    model = replay(
        tmp_path,
        [
            call("create", f"bogus.patch\n{bogus}"),
            call("submit", "bogus.patch"),
            "Done.\n</think>\n\n## Summary\n\nSubmitted.",
        ],
    )
    done = cli(*fix_args(calc_repo, base_image, tmp_path / "run", model), "--branch", "b")
    assert done.returncode == 1
    assert "the patch does not apply" in done.stdout and "gone.py" in done.stdout
    assert "b" not in git(calc_repo, "branch", "--format=%(refname:short)").split()
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["patch_applies"] is False and result["success"] is False


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing repo", "no such directory"),
        ("not a git repo", "is not a git repository"),
        ("no commits", "has no commits yet"),
        ("empty issue", "the issue is empty"),
        ("no issue", "exactly one of --issue TEXT or --issue-file"),
        ("model not found", "model facebook/cwm not found"),
        ("replay malformed", "must hold a JSON array of strings"),
        ("replay missing", "not found"),
        ("replay exhausted", "ran out after 1 replies"),
        ("image missing", "not found: build or pull it"),
        ("image without bash", "has no bash on its PATH"),
        ("docker unreachable", "cannot reach the Docker daemon"),
        ("branch exists", "already exists"),
        ("output not empty", "exists and is not empty"),
        ("output under a file", "cannot be written (Not a directory)"),
        ("output read-only", "cannot be written (Operation not permitted)"),
        ("branch HEAD", "--branch 'HEAD' is not a valid branch name"),
        ("branch @", "--branch '@' is not a valid branch name"),
        ("replay lone surrogate", "reply 2 is not text (a lone surrogate"),
    ],
)
def test_bad_input_is_one_clear_line(
    case: str,
    message: str,
    calc_repo: Path,
    base_image: str,
    tmp_path: Path,
    client: docker.DockerClient,
    request: pytest.FixtureRequest,
) -> None:
    repo, issue, model = calc_repo, ["--issue", "median is wrong"], replay(tmp_path, [])
    extra: list[str] = []
    env: dict[str, str] = {}
    image = base_image
    if case == "missing repo":
        repo = tmp_path / "nowhere"
    elif case == "not a git repo":
        repo = tmp_path / "plain"
        repo.mkdir()
    elif case == "no commits":
        repo = tmp_path / "fresh"
        repo.mkdir()
        git(repo, "init", "-q")
    elif case == "empty issue":
        issue = ["--issue", "  \n"]
    elif case == "no issue":
        issue = []
    elif case == "model not found":
        model = "facebook/cwm"
        env["HF_HUB_OFFLINE"] = "1"  # the same answer as without a network, without retries
    elif case == "replay malformed":
        (tmp_path / "bad.json").write_text('{"not": "a list"}')
        model = f"replay:{tmp_path / 'bad.json'}"
    elif case == "replay missing":
        model = f"replay:{tmp_path / 'absent.json'}"
    elif case == "replay exhausted":
        model = replay(tmp_path, [call("bash", "true")])
    elif case == "image missing":
        image = "cwm-agent-test/absent:nope"
    elif case == "image without bash":
        image = request.getfixturevalue("no_bash_image")
    elif case == "docker unreachable":
        env["DOCKER_HOST"] = "tcp://127.0.0.1:9"
    elif case == "branch exists":
        git(repo, "branch", "taken")
        extra = ["--branch", "taken"]
    elif case == "output not empty":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "keep.txt").write_text("mine")
        extra = ["--output", str(tmp_path / "out")]
    elif case == "output under a file":  # issue 13.5: found out up front, not at the end
        (tmp_path / "a-file").write_text("mine")
        extra = ["--output", str(tmp_path / "a-file" / "out")]
    elif case == "output read-only":
        (tmp_path / "out").mkdir()
        subprocess.run(["chattr", "+i", str(tmp_path / "out")], check=True)  # even for root
        request.addfinalizer(lambda: subprocess.run(["chattr", "-i", str(tmp_path / "out")]))
        extra = ["--output", str(tmp_path / "out")]
    elif case.startswith("branch "):  # issue 13.11: names git's own `git branch` refuses
        extra = ["--branch", case.removeprefix("branch ")]
    elif case == "replay lone surrogate":  # issue 13.12: valid JSON, not text
        (tmp_path / "lone.json").write_text('["Fine.", "\\ud800"]')
        model = f"replay:{tmp_path / 'lone.json'}"
    before = tree_state(calc_repo)
    args = ["fix", "--repo", str(repo), *issue, "--model", model, "--image", image, *extra]
    if "--output" not in extra:
        args += ["--output", str(tmp_path / "run")]
    done = cli(*args, env=env)
    assert done.returncode == 1
    if case == "replay exhausted":  # the rollout ran: its outcome names the cause
        assert message in done.stdout
    else:
        assert done.stderr.startswith("error: ") and message in done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert tree_state(calc_repo) == before
    assert fix_containers(client) == []
    if case != "branch exists":
        assert git(calc_repo, "branch", "--list") == "* main\n"
    if case == "output not empty":
        assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    elif case == "output under a file":
        assert (tmp_path / "a-file").read_text() == "mine"
    elif case != "replay exhausted":
        assert not (tmp_path / "run").exists(), "bad input leaves no output folder behind"


def test_repository_already_inside_an_image(
    client: docker.DockerClient, base_image: str, tmp_path: Path
) -> None:
    """SWE-bench style: no --repo, the image holds the repository at --workdir."""
    maker = client.containers.run(
        base_image,
        ["bash", "-c", "sleep 600"],
        detach=True,
        labels={LABEL: "1", f"{LABEL}.job": "test-image"},
    )
    image = test_image("calc-inside")
    try:
        archive = subprocess.run(
            ["tar", "-C", str(EXAMPLE / "repo"), "-c", "."], capture_output=True, check=True
        ).stdout
        maker.exec_run(["mkdir", "-p", "/srv/calc"])
        maker.put_archive("/srv/calc", archive)
        script = "git init -q && git add -A && git -c user.name=a -c user.email=a@b commit -qm c"
        assert maker.exec_run(["bash", "-c", script], workdir="/srv/calc").exit_code == 0
        maker.commit(*image.split(":"))
    finally:
        maker.remove(force=True)
    try:
        done = cli(
            "fix",
            "--image",
            image,
            "--workdir",
            "/srv/calc",
            "--issue-file",
            str(EXAMPLE / "issue.md"),
            "--model",
            f"replay:{EXAMPLE / 'replay.json'}",
            "--output",
            str(tmp_path / "run"),
            "--json",
        )
        assert done.returncode == 0, done.stderr + done.stdout
        result = json.loads(done.stdout)
        assert result["patch_applies"] is True and result["start"].startswith(image)
        assert (
            "/srv/calc"
            in json.loads((tmp_path / "run" / "trajectory.json").read_text())["messages"][1][
                "content"
            ]
        )
    finally:
        client.images.remove(image, force=True)


def test_patch_stats_count_only_hunk_lines() -> None:
    patch = (
        "diff --git a/q.sql b/q.sql\n--- a/q.sql\n+++ b/q.sql\n@@ -1,2 +1,2 @@\n"
        "-- old comment\n+++ counter\n context\n"
        "diff --git a/n.txt b/n.txt\nnew file mode 100644\n--- /dev/null\n+++ b/n.txt\n"
        "@@ -0,0 +1 @@\n+x\n"
    )
    stats = patch_stats(patch)
    assert (stats.files, stats.additions, stats.deletions) == (2, 2, 1)


def test_tiny_local_model_runs_to_a_clean_end(
    calc_repo: Path, base_image: str, tmp_path: Path, tiny_cwm_dir: Path
) -> None:
    """A random CwmForCausalLM through the transformers backend: nonsense replies end
    the run on format errors and the turn limit, with every output written."""
    done = cli(
        *fix_args(calc_repo, base_image, tmp_path / "run", str(tiny_cwm_dir)),
        "--offline",
        "--greedy",
        "--max-turns",
        "3",
        "--max-reply-tokens",
        "24",
        "--quiet",
    )
    assert done.returncode == 1, done.stderr
    assert "no fix: max_turns" in done.stdout
    trajectory = json.loads((tmp_path / "run" / "trajectory.json").read_text())
    assert trajectory["model"] == str(tiny_cwm_dir)
    replies = [m for m in trajectory["messages"] if m["role"] == "assistant"]
    assert len(replies) == 3
    assert all(m["completion_tokens"] <= 24 for m in replies)
    assert [m["content"] for m in trajectory["messages"] if m["role"] == "user"][1].startswith(
        "FormatError: "
    )


def containers_of_process(client: docker.DockerClient, pid: int) -> list[str]:
    return [
        c["Id"] for c in client.api.containers(all=True, filters={"label": f"{LABEL}.pid={pid}"})
    ]


def wait_for(
    check: Callable[[], object], process: subprocess.Popen[str], limit: float = 120
) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def tool_results(path: Path) -> int:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    return sum(m.get("tool_result") is not None for m in data["messages"])


def assert_interrupted_cleanly(
    client: docker.DockerClient, process: subprocess.Popen[str], output: Path
) -> dict[str, object]:
    """Exit 130, a message that tells the truth, no container then or seconds later, and a
    result.json that says `interrupted`."""
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert err.endswith("interrupted: containers removed\n"), err
    time.sleep(3)  # a create the daemon finishes late shows up by now
    assert containers_of_process(client, process.pid) == []
    result = json.loads((output / "result.json").read_text())
    assert result["status"] == "interrupted" and result["success"] is False
    return result


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_fix_keeps_its_trajectory_and_says_so(
    calc_repo: Path, base_image: str, tmp_path: Path, client: docker.DockerClient, sig: int
) -> None:
    """Issue 13.10: the trajectory is written turn by turn, result.json says interrupted."""
    model = replay(tmp_path, [call("bash", "echo step")] * 2 + [call("bash", "sleep 60")] * 2)
    output = tmp_path / "out"
    before = tree_state(calc_repo)
    process = start_cli(*fix_args(calc_repo, base_image, output, model))
    wait_for(lambda: tool_results(output / "trajectory.json") >= 2, process)
    time.sleep(0.5)  # inside the third call
    process.send_signal(sig)
    result = assert_interrupted_cleanly(client, process, output)
    assert result["turns"] == 3
    trajectory = json.loads((output / "trajectory.json").read_text())
    assert trajectory["status"] == "interrupted" and trajectory["turns"] == 3
    said = "(Ctrl-C)" if sig == signal.SIGINT else "(received signal SIGTERM)"
    assert said in trajectory["reason"] and said in result["reason"], (trajectory, result)
    assert [m["tool_result"]["output"] for m in trajectory["messages"] if m["tool_result"]] == [
        "step\n",
        "step\n",
    ]
    assert tree_state(calc_repo) == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_as_the_container_appears_leaves_none(
    calc_repo: Path, base_image: str, tmp_path: Path, client: docker.DockerClient, sig: int
) -> None:
    """Issue 13.3: the signal lands while the sandbox is being made."""
    model = replay(tmp_path, [call("bash", "sleep 60")])
    output = tmp_path / "out"
    process = start_cli(*fix_args(calc_repo, base_image, output, model))
    wait_for(lambda: containers_of_process(client, process.pid), process)
    process.send_signal(sig)
    assert_interrupted_cleanly(client, process, output)


def test_fix_sweeps_containers_of_dead_runs(
    calc_repo: Path, base_image: str, tmp_path: Path, client: docker.DockerClient
) -> None:
    """Issue 13.3: a container a killed run left (state Created) is removed by the next."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    labels = {
        LABEL: "1",
        f"{LABEL}.job": "fix",
        f"{LABEL}.pid": str(dead.pid),
        f"{LABEL}.host": socket.gethostname(),
    }
    orphan = client.api.create_container(base_image, command=["true"], labels=labels)["Id"]
    done = cli(*fix_args(calc_repo, base_image, tmp_path / "out", replay(tmp_path, [])))
    assert done.returncode == 1 and "ran out after 0 replies" in done.stdout, done.stderr
    assert client.api.containers(all=True, filters={"id": orphan}) == []


def test_links_above_the_root_are_carried_and_submodules_named(
    calc_repo: Path, base_image: str, tmp_path: Path, client: docker.DockerClient
) -> None:
    """Issues 13.6 and 13.15: a monorepo-style relative link that leaves the repository
    is carried as it is (Docker refused it); a submodule is named, not dropped silently."""
    (calc_repo / "docs").mkdir()
    (calc_repo / "docs" / "shared").symlink_to("../../common/guide.md")
    library = tmp_path / "library"
    library.mkdir()
    git(library, "init", "-q", "-b", "main")
    (library / "lib.py").write_text("X = 1\n")
    git(library, "add", "-A")
    git(library, "commit", "-qm", "lib")
    git(
        calc_repo,
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        str(library),
        "vendor/lib",
    )
    git(calc_repo, "add", "-A")
    git(calc_repo, "commit", "-qm", "link and submodule")
    model = replay(
        tmp_path, [call("bash", "readlink docs/shared; test -e vendor/lib || echo absent")]
    )
    done = cli(*fix_args(calc_repo, base_image, tmp_path / "out", model))
    assert done.returncode == 1 and "ran out after 1 replies" in done.stdout, done.stderr
    assert done.stderr == ("warning: 1 submodule(s) are not carried into the sandbox: vendor/lib\n")
    trajectory = json.loads((tmp_path / "out" / "trajectory.json").read_text())
    outputs = [m["tool_result"]["output"] for m in trajectory["messages"] if m["tool_result"]]
    assert outputs == ["../../common/guide.md\nabsent\n"]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["submodules_omitted"] == ["vendor/lib"]


def test_escape_sequences_from_the_model_do_not_reach_the_terminal(
    calc_repo: Path, base_image: str, tmp_path: Path
) -> None:
    """Issue 13.14: the live view prints parts of tool calls and their output."""
    hostile = "printf '\x1b]0;owned\x07\x1b[2J'; ls /nowhere-\x1b[31m"
    model = replay(tmp_path, [call("bash", hostile), "\x1b[2Jno tool call"])
    done = cli(*fix_args(calc_repo, base_image, tmp_path / "out", model))
    assert done.returncode == 1
    assert "turn   1 bash printf ']0;owned[2J'" in done.stdout, done.stdout
    assert "\x1b" not in done.stdout + done.stderr and "\x07" not in done.stdout
