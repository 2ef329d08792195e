"""Test-time scaling: the rules on their own, then the whole pipeline end to end.

The end-to-end tests drive `cwm-agent fix --samples K --test-samples M` with
replayed rollouts (`examples/clamp/replays`): real containers, real git, real
test runs; only the model is scripted.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

from cwm_agent.model import ModelSpec, PolicyError, PolicyPool
from cwm_agent.model.policy import Completion, TokenLimit, per_conversation
from cwm_agent.model.request_batching import BatchingPolicy, RolloutPolicy
from cwm_agent.protocol.chat import Message
from cwm_agent.sandbox import LABEL
from cwm_agent.tts import generated, regression
from cwm_agent.tts.selection import Entry, normalized_key, select_candidate
from cwm_agent.tts.tox import ToxRefused, read_tox
from cwm_agent.workspace import CommandRun
from tests.conftest import run_cli, start_cli
from tests.helpers import CLAMP_EXAMPLE as EXAMPLE
from tests.helpers import call, committed_copy, fix_containers, git, scaled_fix_args


def ran(output: str, exit_code: int | None = 0) -> CommandRun:
    return CommandRun("python test_issue.py", exit_code, output, 0.1)


# -- generated tests ----------------------------------------------------------


def test_generated_test_checks() -> None:
    good = (EXAMPLE / "replays" / "testgen-0.json").read_text()
    source = json.loads(good)[1].split("test_issue.py\n", 1)[1].rsplit("\n</tool>", 1)[0]
    assert generated.static_problem(source) is None
    assert generated.static_problem("def f(:\n").startswith("does not parse as Python: line 1")
    assert generated.static_problem("print('Issue reproduced')\n") == (
        "lacks the 'Issue resolved' marker"
    )
    assert generated.reproduction_problem(ran("Issue reproduced\n")) is None
    assert generated.reproduction_problem(ran("Issue resolved\n")) == (
        "does not reproduce the issue on the original code: printed 'Issue resolved'"
    )
    assert "printed 'Other issues' as well" in (
        generated.reproduction_problem(ran("Issue reproduced\nOther issues\n")) or ""
    )
    assert "timed out" in (generated.reproduction_problem(ran("", None)) or "")
    assert generated.passes(ran("Issue resolved\n"))
    assert not generated.passes(ran("Issue resolved\nOther issues\n"))
    assert not generated.passes(ran("Issue resolved\n", None))


def test_majority_groups_ties_go_to_the_lowest_test_number() -> None:
    behaviour = {
        0: frozenset({1}),
        1: frozenset({0, 2}),
        2: frozenset({0, 2}),
        3: frozenset({1}),
        4: frozenset(),
        5: frozenset({3}),
        6: frozenset({4}),
        7: frozenset({5}),
    }
    groups = generated.majority_groups(behaviour)
    # Two groups of two: {1} first appears at test 0, so it ranks before {0, 2}.
    assert [g.tests for g in groups] == [(0, 3), (1, 2), (4,), (5,), (6,)]
    assert generated.selected_tests(groups) == [0, 1, 2, 3, 4, 5, 6]


# -- selection ----------------------------------------------------------------


def test_normalised_patches_ignore_comments_docstrings_and_spacing() -> None:
    one = {"m.py": b'def f(x):\n    """Doc."""\n    return min(x, 1)\n'}
    two = {"m.py": b"def f(x):\n    # a comment\n    return min(x,  1)  # why\n"}
    other = {"m.py": b"def f(x):\n    return max(x, 1)\n"}
    assert normalized_key(one) == normalized_key(two) != normalized_key(other)
    files = {"a.txt": b"x  y\n", "m.py": one["m.py"]}
    assert normalized_key(files) == normalized_key(dict(reversed(files.items())))
    assert normalized_key({"a.txt": b"x y"}) == normalized_key({"a.txt": b"x\n  y\n"})
    assert normalized_key({"m.py": None}) != normalized_key({"m.py": b""})


def test_selection_rules_in_order() -> None:
    assert select_candidate([]).selected is None
    best = select_candidate([Entry(0, 3, "a", 10), Entry(1, 5, "b", 99)])
    assert (best.selected, best.reason) == (1, "candidate 1: highest score (5 tests passed)")
    majority = select_candidate([Entry(0, 5, "a", 1), Entry(1, 5, "b", 9), Entry(2, 5, "b", 8)])
    assert majority.selected == 2 and "majority" in majority.reason
    assert majority.votes == {"a": 1, "b": 2}
    tokens = select_candidate([Entry(0, 5, "a", 9), Entry(1, 5, "b", 8)])
    assert tokens.selected == 1 and "fewest tokens (8)" in tokens.reason
    last = select_candidate([Entry(3, 5, "a", 8), Entry(1, 5, "b", 8)])
    assert last.selected == 1 and "lowest candidate number" in last.reason


# -- regression tests ---------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_things.py").write_text(
        "import unittest\nimport warnings\n\n\nclass Things(unittest.TestCase):\n"
        "    def test_good(self):\n        self.assertTrue(True)\n\n"
        "    def test_bad(self):\n        self.assertTrue(False)\n\n"
        "    def test_documented(self):\n        '''A docstring shown by -v.'''\n\n"
        "    def test_broken(self):\n        raise RuntimeError('boom')\n\n"
        "    def test_warns(self):\n        warnings.warn('old', DeprecationWarning)\n"
    )
    return tmp_path


def host_run(project: Path, command: list[str]) -> CommandRun:
    done = subprocess.run(command, cwd=project, capture_output=True, text=True)
    return CommandRun(" ".join(command), done.returncode, done.stdout + done.stderr, 0.1)


def test_unittest_and_pytest_outputs_split_into_tests(project: Path) -> None:
    python = sys.executable
    unit = host_run(project, [python, "-m", "unittest", "discover", "-v", "-s", "tests"])
    assert regression.unittest_outcomes(unit.output) == {
        "test_things.Things.test_bad": False,
        "test_things.Things.test_broken": False,
        "test_things.Things.test_documented": True,
        "test_things.Things.test_good": True,
        "test_things.Things.test_warns": True,  # the warning is printed before "ok"
    }
    py = host_run(project, [python, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "tests"])
    assert regression.pytest_outcomes(py.output) == {
        "tests/test_things.py::Things::test_bad": False,
        "tests/test_things.py::Things::test_broken": False,
        "tests/test_things.py::Things::test_documented": True,
        "tests/test_things.py::Things::test_good": True,
        "tests/test_things.py::Things::test_warns": True,
    }
    # An unknown runner: the command is one test, passing when it exits 0.
    whole = regression.Method("given", "", unit.command, "command", None)
    assert whole.outcomes(unit) == {unit.command: False}


def test_changed_files_of_a_patch() -> None:
    patch = (
        b"diff --git a/pkg/mod.py b/pkg/mod.py\n--- a/pkg/mod.py\n+++ b/pkg/mod.py\n@@ -1 +1 @@\n"
        b"-a\n+b\ndiff --git a/gone.txt b/gone.txt\ndeleted file mode 100644\n"
    )
    assert regression.changed_files(patch) == ["pkg/mod.py", "gone.txt"]


# -- tox.ini without tox ---------------------------------------------------------

TMP = "mkdir -p /tmp/cwm-agent-tox/env /tmp/cwm-agent-tox/tmp"


def test_tox_substitutions_as_tox_does_them() -> None:
    """flask's line, the one that counted zero tests when taken literally."""
    flask = (
        "[testenv]\ncommands = python -m pytest -rA -p no:cacheprovider -v --tb=short "
        "--basetemp={envtmpdir} {posargs:tests}\n"
    )
    command = read_tox(flask, "/testbed", {})
    assert command.shell() == (
        f"{TMP} && python -m pytest -rA -p no:cacheprovider -v --tb=short "
        "--basetemp=/tmp/cwm-agent-tox/tmp tests"
    )
    assert command.shell(["tests/test_a.py::test_b[x]"]).endswith(" 'tests/test_a.py::test_b[x]'")
    # pluggy's: a command from {env:...}, lines and setenv entries for other factors.
    pluggy = (
        "[testenv]\ncommands=\n  {env:_PLUGGY_TOX_CMD:pytest} {posargs}\n"
        "  coverage: coverage report -m\nsetenv=\n  _PYTEST_SETUP_SKIP_PLUGGY_DEP=1\n"
        "  coverage: _PLUGGY_TOX_CMD=coverage run -m pytest\n"
    )
    assert read_tox(pluggy, "/r", {}).shell() == (
        f"export _PYTEST_SETUP_SKIP_PLUGGY_DEP=1 && {TMP} && pytest"
    )
    # changedir, setenv over {toxinidir}, the environment, a continued line.
    ini = (
        "[testenv]\nchangedir = {toxinidir}/tests\nsetenv =\n  PYTHONPATH = {toxinidir}/src\n"
        "commands = {envpython} -m unittest \\\n    -v --locals {env:EXTRA:-b} {env:HOME:/x}\n"
    )
    assert read_tox(ini, "/r", {"HOME": "/root"}).shell() == (
        f"export PYTHONPATH=/r/src && {TMP} && cd tests && python -m unittest -v --locals -b /root"
    )


@pytest.mark.parametrize(
    ("commands", "why"),
    [
        ("pytest {[base]opts}", "tox substitution {[base]opts} is not supported"),
        ("py38: pytest", "runs only in some tox environments"),
        ("pytest --x={posargs}", "{posargs} inside a word is not supported"),
        ("pytest 'unclosed", "does not split into words"),
    ],
)
def test_tox_lines_that_need_tox_are_refused(commands: str, why: str) -> None:
    with pytest.raises(ToxRefused, match=re.escape(why)):
        read_tox(f"[testenv]\ncommands = {commands}\n", "/r", {})


def test_a_run_that_tells_nothing_is_never_counted() -> None:
    way = regression.pytest_method([], "pytest", "test files")
    usage = CommandRun(way.command, 4, "ERROR: usage: unrecognized arguments: --cov\n", 1.0)
    assert regression.judge(way, usage) == ("usage-error", {})
    assert regression.judge(way, CommandRun(way.command, 5, "no tests ran\n", 1.0))[0] == "no-tests"
    assert regression.judge(way, CommandRun(way.command, None, "", 9.0))[0] == "timed-out"
    failing = CommandRun(way.command, 1, "FAILED t.py::a - boom\n", 1.0)
    assert regression.judge(way, failing) == ("no-passing-tests", {"t.py::a": False})
    # Node ids survive the command line unless pytest's summary cut them at a space.
    assert regression.node_ids_or_files(["t.py::a[1]", "u.py::b"]) == ["t.py::a[1]", "u.py::b"]
    assert regression.node_ids_or_files(["t.py::a[x", "u.py::b"]) == ["t.py", "u.py"]


# -- batching many rollouts through one model ---------------------------------


class EchoModel:
    """A model double that answers each conversation with its last message and
    records the size of every call, like a GPU batch would see them."""

    name = "echo"
    tokenizer = None

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def complete(
        self, conversations: Sequence[Sequence[Message]], max_new_tokens: TokenLimit
    ) -> list[Completion]:
        limits = per_conversation(max_new_tokens, len(conversations))
        self.calls.append(limits)
        time.sleep(0.05)  # a decoding step takes time; requests pile up meanwhile
        return [Completion(c[-1].content, 1, 1, "stop", None, 0.05) for c in conversations]


def test_batching_gathers_concurrent_rollouts_and_keeps_answers_apart() -> None:
    model = EchoModel()
    shared = BatchingPolicy(model, window_s=0.2)
    answers: dict[int, list[str]] = {}

    def rollout(index: int, policy: RolloutPolicy) -> None:
        try:
            got = []
            for turn in range(3):
                text = f"rollout {index} turn {turn}"
                got.append(policy.complete([[Message.user(text)]], 10 + index)[0].text)
                time.sleep(0.01 * index)  # tools take different times
            answers[index] = got
        finally:
            policy.close()

    # All six are open before any asks, so the first turn leaves as one batch.
    policies = [shared.rollout() for _ in range(6)]
    threads = [
        threading.Thread(target=rollout, args=(i, policy)) for i, policy in enumerate(policies)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert answers == {i: [f"rollout {i} turn {t}" for t in range(3)] for i in range(6)}
    assert shared.stats.requests == 18
    assert shared.stats.calls < 18 and shared.stats.largest == 6
    assert sorted(limit for call in model.calls for limit in call) == sorted(
        10 + i for i in range(6) for _ in range(3)
    )


def test_batching_passes_model_errors_to_every_waiting_rollout() -> None:
    class Broken(EchoModel):
        def complete(self, conversations, max_new_tokens):  # type: ignore[no-untyped-def]
            raise PolicyError("the GPU fell over")

    shared = BatchingPolicy(Broken(), window_s=0.05)
    errors: list[str] = []

    def rollout() -> None:
        policy = shared.rollout()
        try:
            policy.complete([[Message.user("hi")]], 5)
        except PolicyError as exc:
            errors.append(str(exc))
        finally:
            policy.close()

    threads = [threading.Thread(target=rollout) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == ["the GPU fell over"] * 3


def test_replay_for_many_rollouts_needs_a_directory(tmp_path: Path) -> None:
    pool = PolicyPool(ModelSpec.parse(f"replay:{EXAMPLE / 'replays'}"))
    with pool.rollout("candidate-2") as policy:
        assert policy.name.endswith("candidate-2.json")
    file = EXAMPLE / "replays" / "candidate-0.json"
    done = run_cli(
        *("fix", "--repo", str(tmp_path), "--issue", "x", "--model", f"replay:{file}"),
        *("--samples", "2"),
    )
    assert done.returncode == 1
    assert done.stderr.strip().endswith(
        "with --samples/--test-samples, replay: needs a directory holding "
        "candidate-0.json … and testgen-0.json …"
    )


# -- end to end ---------------------------------------------------------------


@pytest.fixture
def clamp_repo(tmp_path: Path) -> Path:
    """`clamp()` uses `low` where it means `high`; one of three unit tests fails."""
    return committed_copy(EXAMPLE / "repo", tmp_path / "clamp")


@pytest.mark.docker
def test_selects_the_right_candidate_and_explains_every_decision(
    clamp_repo: Path, base_image: str, tmp_path: Path, client: docker.DockerClient
) -> None:
    out = tmp_path / "run"
    head = git(clamp_repo, "rev-parse", "HEAD")
    done = run_cli(
        *scaled_fix_args(clamp_repo, base_image, out, EXAMPLE / "replays"),
        *("--samples", "5", "--test-samples", "4", "--jobs", "10", "--branch", "fix-clamp"),
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "tts.json").read_text())
    result = json.loads((out / "result.json").read_text())
    c = {cand["index"]: cand for cand in report["candidates"]}

    # Regression tests: the two unit tests passing on the original code.
    assert report["regression"]["command"] == "python -m unittest discover -v -s tests"
    assert report["regression"]["tests"] == [
        "test_mathutil.MathTest.test_clamp_below",
        "test_mathutil.MathTest.test_mean",
    ]
    # Generated tests: 0 and 1 reproduce; 2 does not; 3 is not Python.
    tests = {t["index"]: t for t in report["generated_tests"]}
    assert [tests[i]["kept"] for i in range(4)] == [True, True, False, False]
    assert tests[2]["dropped_because"] == (
        "does not reproduce the issue on the original code: printed 'Issue resolved'"
    )
    assert tests[3]["dropped_because"].startswith("does not parse as Python: line 4")
    assert report["groups"] == [{"rank": 0, "tests": [0, 1], "resolved_by": [0, 1, 2]}]

    # Candidates: 0 and 1 are the same fix (one vote each way, two votes), 2 breaks
    # an existing test, 3 submitted nothing, 4's patch does not apply.
    assert [c[i]["score"] for i in range(5)] == [4, 4, 3, None, None]
    assert c[2]["regression"]["test_mathutil.MathTest.test_clamp_below"] is False
    assert c[0]["key"] == c[1]["key"] != c[2]["key"]
    assert [c[i]["votes"] for i in range(3)] == [2, 2, 1]
    # Tested once per distinct patch: 1 shares 0's outcomes; 3 and 4 are never tested.
    assert [c[i]["tested_as"] for i in range(5)] == [0, 0, 2, None, None]
    assert c[1]["generated"] == c[0]["generated"] and c[1]["regression"] == c[0]["regression"]
    # The original run (each way tried), the tests' check, the grouping, then the two
    # distinct patches: 3 tests (0-2) on the original, 2 x (1 regression + 2 kept tests)
    # runs; one interpreter per regression run and per batch of tests.
    tried = [a for a in report["regression"]["attempts"] if a["status"] != "refused"]
    assert report["testing"].pop("container_s") > 0
    assert report["testing"] == {
        "containers": 5,
        "test_executions": len(tried) + 3 + 2 * (1 + 2),
        "interpreter_starts": len(tried) + 1 + 2 * (1 + 1),
        "fallbacks": [],
    }
    assert c[3]["why_not"] == "no patch submitted" and c[3]["status"] == "max_turns"
    assert c[4]["why_not"] == "the patch does not apply" and c[4]["applies"] is False
    assert c[0]["tokens"] < c[1]["tokens"]
    assert report["selected"] == 0
    assert report["decision"] == (
        f"candidate 0: 2 candidates tied at 4 tests passed; equal votes (2); "
        f"fewest tokens ({c[0]['tokens']})"
    )

    # Outputs: the selected patch, every rollout's trajectory, a branch with the fix.
    assert (out / "patch.diff").read_text() == c[0]["patch"]
    assert "min(value, high)" in c[0]["patch"]
    for role, count in (("candidates/candidate", 5), ("testgen/testgen", 4)):
        for i in range(count):
            assert (out / f"{role}-{i}" / "trajectory.json").is_file()
    assert result["success"] and result["selected"] == 0
    assert git(clamp_repo, "rev-parse", "HEAD") == head
    shown = git(clamp_repo, "show", "fix-clamp:mathutil.py")
    assert "return max(low, min(value, high))" in shown
    assert "candidates" in done.stdout and "→0" in done.stdout
    assert fix_containers(client) == []


def start_fix(args: list[str]) -> subprocess.Popen[str]:
    return start_cli(*args)


def wait_for_calls(
    client: docker.DockerClient, process: subprocess.Popen[str], command: str, roles: set[str]
) -> dict[str, Container]:
    """The containers of these rollouts, once each is running `command`."""
    found: dict[str, Container] = {}
    deadline = time.monotonic() + 180
    while set(found) != roles and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
        mine = [f"{LABEL}.job=fix", f"{LABEL}.pid={process.pid}"]  # not others' runs
        for container in client.containers.list(filters={"label": mine}):
            try:  # a container may end between the listing and this look
                processes = container.top()["Processes"] or []  # none yet, or gone
            except docker.errors.APIError:
                continue
            if any(command in " ".join(p) for p in processes):
                found[container.labels[f"{LABEL}.role"]] = container
    assert set(found) == roles, "the rollouts never reached their slow call"
    return found


@pytest.mark.docker
def test_a_candidate_whose_container_dies_fails_alone(
    clamp_repo: Path, base_image: str, tmp_path: Path, client: docker.DockerClient
) -> None:
    replays = tmp_path / "replays"
    replays.mkdir()
    shutil.copy(EXAMPLE / "replays" / "candidate-0.json", replays / "candidate-0.json")
    slow = [call("bash", "sleep 120", "Wait for something.")] * 3
    (replays / "candidate-1.json").write_text(json.dumps(slow))
    out = tmp_path / "run"
    process = start_fix(scaled_fix_args(clamp_repo, base_image, out, replays, "--samples", "2"))
    sleeping = wait_for_calls(client, process, "sleep 120", {"candidate-1"})
    sleeping["candidate-1"].kill()
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr
    report = json.loads((out / "tts.json").read_text())
    dead = report["candidates"][1]
    assert dead["status"] == "error" and dead["why_not"] == "the rollout failed"
    assert dead["reason"].startswith("sandbox:")
    assert report["selected"] == 0 and report["candidates"][0]["score"] == 2
    assert "candidate-1: error" in stdout
    assert fix_containers(client) == []


@pytest.mark.docker
def test_sigterm_stops_every_rollout_and_removes_their_containers(
    clamp_repo: Path, base_image: str, tmp_path: Path, client: docker.DockerClient
) -> None:
    replays = tmp_path / "replays"
    replays.mkdir()
    slow = [call("bash", "sleep 300", "Wait for something.")] * 3
    for name in ("candidate-0", "candidate-1", "testgen-0"):
        (replays / f"{name}.json").write_text(json.dumps(slow))
    args = scaled_fix_args(clamp_repo, base_image, tmp_path / "run", replays)
    process = start_fix([*args, "--samples", "2", "--test-samples", "1"])
    wait_for_calls(client, process, "sleep 300", {"candidate-0", "candidate-1", "testgen-0"})
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=90)  # well before any `sleep 300` ends
    assert process.returncode == 130, stderr
    assert "interrupted: containers removed" in stderr and "Traceback" not in stderr
    assert fix_containers(client) == []


# -- SWE-bench rows' own test command -------------------------------------------


def test_a_swebench_rows_regression_command_is_its_own() -> None:
    """Classic: the spec's test_cmd over the harness's directives for the test patch's
    files present before it; 5.x: its eval script's test command; custom: its test_cmd."""
    from cwm_agent.swebench.dataset import Instance
    from cwm_agent.swebench.grading import _instance_way

    patch = "".join(
        f"diff --git a/{f} b/{f}\n--- a/{f}\n+++ b/{f}\n@@ -1 +1 @@\n-a\n+b\n"
        for f in ("tests/queries/tests.py", "tests/added/tests.py")
    )
    row = {"instance_id": "django__django-1", "problem_statement": "x", "test_patch": patch}
    classic = Instance(**row, repo="django/django", version="3.2")  # with eval_commands
    way = _instance_way(classic, {"tests/queries/tests.py", "setup.py"})
    assert isinstance(way, regression.Method)
    assert "export LANG=en_US.UTF-8" in way.command.splitlines()  # the spec's eval_commands
    assert way.command.splitlines()[-1] == (
        "./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1 queries.tests"
    )
    assert "1 of 2 test patch files" in way.why and way.runner == "parse_log_django"
    log = "test_a (queries.tests.T) ... ok\ntest_b (queries.tests.T) ... FAIL\n"
    assert way.parse is not None and way.parse(log) == {
        "test_a (queries.tests.T)": True,
        "test_b (queries.tests.T)": False,
    }
    assert way.only is None  # runtests.py takes labels, not the parser's names
    script = "git apply -v - <<'EOF'\n...\nEOF\n: '>>>>> Start Test Output'\nmake check\n"
    script += ": '>>>>> End Test Output'\n"
    five = Instance(**row, repo="x/y", eval_script=script, log_parser="parse_log_pytest")
    assert getattr(_instance_way(five, set()), "command", None) == "make check"
    custom = Instance(**row, repo="x/y", test_cmd="python3 -m unittest -v test_calc")
    assert getattr(_instance_way(custom, set()), "command", None) == custom.test_cmd
    unknown = _instance_way(Instance(**row, repo="django/django", version="0.1"), set())
    assert isinstance(unknown, regression.Refused) and "no harness spec" in unknown.why
