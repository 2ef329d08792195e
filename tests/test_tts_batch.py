"""Generated tests in one interpreter: de-duplication, what may be forked from a
preload, and verdicts equal to running each test alone — on hostile tests, in
a real container."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from cwm_agent import gitrepo
from cwm_agent.sandbox import LABEL
from cwm_agent.tts import batch, generated
from cwm_agent.tts.pipeline import decide
from cwm_agent.tts.report import CandidateReport
from cwm_agent.tts.selection import Entry, select_candidate
from cwm_agent.workspace import CommandRun, StartSandbox, Workspace
from tests.conftest import run_cli
from tests.helpers import CLAMP_EXAMPLE, committed_copy, fix_containers, scaled_fix_args

RESOLVED = 'print("Issue resolved")'


def test_copies_of_a_test_are_one_test_under_the_lowest_number() -> None:
    base = b'import mathutil\n\nprint("Issue resolved" if mathutil.clamp(5, 0, 10) == 5 else "x")\n'
    commented = (
        b'"""Checks clamp."""\nimport mathutil  # the module\n\n\n' + base.split(b"\n", 2)[2]
    )
    other = base.replace(b"(5, 0, 10) == 5", b"(7, 0, 10) == 7")
    assert generated.distinct({3: commented, 1: base, 2: other, 5: base}) == {1: [1, 3, 5], 2: [2]}


def test_a_test_that_imports_a_preloaded_module_late_runs_alone() -> None:
    first = b"import sympy\nfrom mathutil import clamp\nprint(clamp(1, 0, 2))\n"
    late = b'import os\nos.environ["SYMPY_USE_CACHE"] = "no"\nimport sympy\n'
    inner = b"import json\n\ndef main():\n    import sympy\n\nmain()\n"
    dynamic = b'import importlib\nimportlib.import_module("json")\n'
    unrelated_late = b"import json\nprint(json)\nimport csv\n"
    plan = batch.plan({0: first, 1: late, 2: inner, 3: dynamic, 4: unrelated_late})
    assert plan.preload == ["sympy", "mathutil", "os", "json", "importlib"]
    assert plan.forked == {0: True, 1: False, 2: False, 3: False, 4: True}


# Each prints what a test would; the verdict must not depend on how it is run.
HOSTILE = {
    "hangs": 'import time\nprint("Issue resolved", flush=True)\ntime.sleep(600)\n',
    "exits at once, flushed": f"import os\n{RESOLVED[:-1]}, flush=True)\nos._exit(0)\n",
    "exits at once, unflushed": f"import os\n{RESOLVED}\nos._exit(0)\n",
    "segfaults": 'import ctypes\nprint("Issue resolved", flush=True)\nctypes.string_at(0)\n',
    "segfaults first": f"import ctypes\nctypes.string_at(0)\n{RESOLVED}\n",
    "exhausts memory": (
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (300 << 20, 300 << 20))\n"
        'try:\n    hog = bytearray(2 << 30)\nexcept MemoryError:\n    print("Other issues")\n'
        f"else:\n    {RESOLVED}\n"
    ),
    "monkeypatches json": f"import json\njson.dumps = None\n{RESOLVED}\n",
    "needs json intact": (
        'import json\nprint("Issue resolved" if json.dumps({}) == "{}" else "Issue reproduced")\n'
    ),
    "breaks the module under test": (
        f'import mathutil\nopen("mathutil.py", "w").write("raise SystemExit(3)\\n")\n{RESOLVED}\n'
    ),
    "needs the module intact": (
        "import mathutil\n"
        'print("Issue resolved" if mathutil.mean([1, 3]) == 2 else "Issue reproduced")\n'
    ),
    "the bug itself": (
        "from mathutil import clamp\n"
        'print("Issue resolved" if clamp(5, 0, 10) == 5 else "Issue reproduced")\n'
    ),
    "sets the environment, then imports": (
        'import os\nos.environ["MARK"] = "Issue resolved"\nimport mathutil\n'
        'print(os.environ["MARK"])\n'
    ),
    "exits non-zero": f"import sys\n{RESOLVED}\nsys.exit(3)\n",
    "raises": f"{RESOLVED}\nraise RuntimeError('late')\n",
    "reads stdin": f"input()\n{RESOLVED}\n",
    "thread prints last": (
        "import threading, time\n"
        "def late():\n    time.sleep(0.3)\n    print('Issue resolved')\n"
        "threading.Thread(target=late).start()\n"
    ),
    "atexit handler": f"import atexit\natexit.register(lambda: {RESOLVED})\n",
    "leaves a process behind": (
        f'import subprocess\nsubprocess.Popen(["sleep", "600"])\n{RESOLVED[:-1]}, flush=True)\n'
    ),
    "changes directory and path": (
        'import os, sys\nos.chdir("/")\nsys.path.insert(0, "/nowhere")\n'
        'print("Issue resolved" if os.path.exists("tests") else "Issue reproduced")\n'
    ),
    "chatters": 'import sys\nsys.stdout.write("x" * (6 << 20))\nprint("\\nIssue resolved")\n',
    "uses __main__ and argv": (
        'import sys\nif __name__ == "__main__" and sys.argv == ["test_issue.py"]:\n'
        f"    {RESOLVED}\n"
    ),
}
TIMEOUT = 5.0


@pytest.fixture
def tree(
    tmp_path: Path, base_image: str, client: docker.DockerClient, run_label: str
) -> Iterator[StartSandbox]:
    repo = committed_copy(CLAMP_EXAMPLE / "repo", tmp_path / "clamp")
    snapshot = gitrepo.snapshot(gitrepo.open_repo(repo), False).tar
    workspace = Workspace(image=base_image, snapshot=snapshot, labels={f"{LABEL}.run": run_label})
    with workspace.open(client) as start:
        yield start


def verdicts(runs: dict[int, CommandRun]) -> dict[int, tuple[bool, bool, str | None]]:
    """What the recipe reads of a run: timed out, passes, why it does not reproduce."""
    return {
        test: (run.timed_out, generated.passes(run), generated.reproduction_problem(run))
        for test, run in runs.items()
    }


@pytest.mark.docker
def test_hostile_tests_get_the_verdicts_they_get_alone(tree: StartSandbox) -> None:
    names = list(HOSTILE)
    sources = {i: HOSTILE[name].encode() for i, name in enumerate(names)}
    together = batch.run_tests(tree, sources, TIMEOUT)
    _, out, _ = tree.box.exec(["bash", "-c", "pgrep -x sleep; git status --porcelain"])
    assert out == b""  # nothing left running, the tree as it was
    alone = batch.run_alone(tree, sources, TIMEOUT)
    assert together.fallback is None
    mine, theirs = verdicts(together.runs), verdicts(alone.runs)
    assert {names[i]: v for i, v in mine.items()} == {names[i]: v for i, v in theirs.items()}
    # One interpreter for all, but the one test that sets the environment first.
    assert together.interpreter_starts == 2 and alone.interpreter_starts == len(sources)
    by_name = {names[i]: v for i, v in mine.items()}
    assert by_name["hangs"][0] and not by_name["exits at once, flushed"][0]
    assert by_name["needs json intact"][1] and by_name["needs the module intact"][1]
    assert by_name["sets the environment, then imports"][1]
    assert not by_name["the bug itself"][1] and by_name["the bug itself"][2] is None
    assert by_name["thread prints last"][1] and by_name["atexit handler"][1]
    segfault = together.runs[names.index("segfaults")]
    assert segfault.exit_code == 139 and generated.passes(segfault)


@pytest.mark.docker
def test_a_test_that_kills_the_runner_sends_the_batch_back_to_one_at_a_time(
    tree: StartSandbox,
) -> None:
    sources = {
        0: HOSTILE["the bug itself"].encode(),
        1: b'import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint("Issue resolved")\n',
        2: HOSTILE["needs json intact"].encode(),
    }
    together = batch.run_tests(tree, sources, TIMEOUT)
    assert together.fallback is not None and "batch runner exited 137" in together.fallback
    assert verdicts(together.runs) == verdicts(batch.run_alone(tree, sources, TIMEOUT).runs)
    assert together.interpreter_starts == 1 + len(sources)


def test_only_the_top_five_majority_groups_score() -> None:
    """Six behaviour groups of two tests; candidate 0 wins on the top five, and
    the sixth, which only candidate 1 passes, would tie it and make candidate 1
    (fewer tokens) the choice."""
    behaviours = [{0}, {0, 2}, {1, 2}, {1, 3}, {0, 3}, {1}]  # two tests each, in this order
    passes = {c: {} for c in range(4)}
    for group, resolved in enumerate(behaviours):
        for test in (2 * group, 2 * group + 1):
            for c in range(4):
                passes[c][test] = c in resolved
    tokens = {0: 20, 1: 10, 2: 30, 3: 30}
    candidates = [
        CandidateReport(
            index=c,
            status="submitted",
            eligible=True,
            key=f"k{c}",
            tokens=tokens[c],
            generated=passes[c],
        )
        for c in range(4)
    ]
    groups, decision = decide(candidates, range(12))
    assert [g.tests for g in groups] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert [c.score for c in candidates] == [6, 4, 4, 4]
    assert decision.selected == 0
    everything = [Entry(c, sum(passes[c].values()), f"k{c}", tokens[c]) for c in range(4)]
    assert select_candidate(everything).selected == 1  # what a sixth group would do


@pytest.mark.docker
def test_copies_are_tested_once_and_still_vote(
    tmp_path: Path, base_image: str, client: docker.DockerClient
) -> None:
    """The clamp example plus a sixth candidate replaying the second's rollout and
    a fifth test that is the first with a comment: neither costs a run, both count."""
    replays = tmp_path / "replays"
    shutil.copytree(CLAMP_EXAMPLE / "replays", replays)
    shutil.copy(replays / "candidate-1.json", replays / "candidate-5.json")
    first = json.loads((replays / "testgen-0.json").read_text())
    copy = [
        r.replace("<tool: create>\ntest_issue.py\n", "<tool: create>\ntest_issue.py\n# same\n")
        for r in first
    ]
    assert copy != first
    (replays / "testgen-4.json").write_text(json.dumps(copy))
    repo = committed_copy(CLAMP_EXAMPLE / "repo", tmp_path / "clamp")
    out = tmp_path / "run"
    args = scaled_fix_args(repo, base_image, out, replays, "--samples", "6")
    done = run_cli(*args, "--test-samples", "5", "--jobs", "4")
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "tts.json").read_text())
    c = report["candidates"]
    tests = report["generated_tests"]

    assert [t["duplicate_of"] for t in tests] == [None, None, None, None, 0]
    assert tests[4]["kept"] and tests[4]["original_output"] == tests[0]["original_output"]
    assert report["groups"][0]["tests"] == [0, 1, 4]  # the copy adds to its group's weight
    assert [x["tested_as"] for x in c] == [0, 0, 2, None, None, 0]
    assert c[5]["generated"] == c[0]["generated"] and set(c[5]["generated"]) == {"0", "1", "4"}
    assert [c[i]["votes"] for i in (0, 1, 2, 5)] == [3, 3, 1, 3]
    assert [c[i]["score"] for i in (0, 1, 2, 5)] == [5, 5, 4, 5]  # 3 generated + 2 or 1 regression
    assert report["selected"] == 0
    tried = [a for a in report["regression"]["attempts"] if a["status"] != "refused"]
    # Tests 0-2 on the original (4 is 0), then 2 distinct patches x (regression + 2 tests).
    assert report["testing"]["test_executions"] == len(tried) + 3 + 2 * 3
    assert report["testing"]["containers"] == 5
    assert fix_containers(client) == []
