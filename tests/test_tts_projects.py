"""Test-time scaling on real projects' code with their real test suites.

Each project's pinned sdist (tests/projects.py) is a repository; two scripted
candidates edit it: one breaks an existing test, one changes nothing that a
test sees. The one that breaks a test must lose, because the regression plan
found the project's tests however its tox.ini or pytest config spells them:

- MarkupSafe: tox `pytest ... --basetemp={envtmpdir} {posargs}`, setup.cfg [tool:pytest];
- cachetools: tox's `py.test --cov=...` needs pytest-cov (a usage error), so pytest is next;
- more-itertools: tox `{envpython} -m unittest -v {posargs}`;
- exceptiongroup: no tox.ini, pyproject.toml [tool.pytest.ini_options].

Then a classic SWE-bench row (marshmallow 3.0, a real harness spec) in an
image holding the project at /testbed: the spec's test command over its test
patch's files, without the patch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from cwm_agent.sandbox import LABEL
from tests.conftest import test_image
from tests.helpers import committed_copy, git
from tests.projects import CASES, Case, build_image, edit_replay, sdist

pytestmark = pytest.mark.docker

IMAGE = test_image("pytest-8.3.5")
SWEBENCH_IMAGE = test_image("swebench-marshmallow-3.0.0")
ISSUE = "Make the change the maintainers asked for without changing behaviour."


@pytest.fixture(scope="module")
def pytest_image(
    client: docker.DockerClient, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The base image with pytest's wheels unpacked: no network needed, none used."""
    yield build_image(client, base_image, IMAGE, None, tmp_path_factory.mktemp("image") / "ctx")
    client.images.remove(IMAGE, force=True)


def write_replays(folder: Path, case: Case) -> Path:
    """candidate-0 breaks a test (and is the cheaper), candidate-1 adds a comment."""
    folder.mkdir(parents=True)
    kept = case.line.rstrip("\n") + "  # unchanged behaviour\n"
    rollouts = [
        edit_replay(case.path, case.line, case.breaks, "Short."),
        edit_replay(case.path, case.line, kept, "A longer explanation of a careful change. " * 8),
    ]
    for index, texts in enumerate(rollouts):
        (folder / f"candidate-{index}.json").write_text(json.dumps(texts))
    return folder


def run_owned(args: list[str], client: docker.DockerClient) -> tuple[int, str, str]:
    """`cwm-agent ARGS` in a new process; checks that it left no container of its own."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cwm_agent.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    out, err = process.communicate(timeout=600)
    left = client.containers.list(all=True, filters={"label": f"{LABEL}.pid={process.pid}"})
    assert left == [], "containers left behind"
    return process.returncode, out, err


def fix_with_two_candidates(
    case: Case, repo: Path, tmp_path: Path, client: docker.DockerClient, *extra: str
) -> tuple[dict[str, Any], str]:
    """`fix --samples 2` on `repo` with the breaker and the keeper: tts.json, and stdout."""
    replays = write_replays(tmp_path / "replays", case)
    out = tmp_path / "run"
    code, stdout, stderr = run_owned(
        [
            "fix",
            *("--repo", str(repo), "--issue", ISSUE, "--image", IMAGE),
            *("--model", f"replay:{replays}", "--output", str(out), "--samples", "2", *extra),
        ],
        client,
    )
    assert code == 0, stderr
    return json.loads((out / "tts.json").read_text()), stdout + stderr


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_candidate_that_breaks_a_real_test_loses(
    name: str, pytest_image: str, tmp_path: Path, client: docker.DockerClient
) -> None:
    case = CASES[name]
    repo = committed_copy(sdist(case.spec), tmp_path / name)
    report, printed = fix_with_two_candidates(case, repo, tmp_path, client)
    plan = report["regression"]
    assert (plan["status"], plan["method"], plan["command"]) == ("ok", case.method, case.command)
    assert len(plan["tests"]) == case.passing
    breaker, keeper = report["candidates"]
    for candidate in (breaker, keeper):  # say why a candidate went untested, if one did
        assert candidate["eligible"], {k: candidate[k] for k in ("status", "reason", "why_not")}
    failed = sorted(test for test, passed in breaker["regression"].items() if not passed)
    assert len(failed) == case.broken and all(test.startswith(case.where) for test in failed)
    assert all(keeper["regression"].values()) and len(keeper["regression"]) == case.passing
    assert breaker["score"] < keeper["score"] == case.passing
    assert report["selected"] == 1
    assert report["decision"] == f"candidate 1: highest score ({case.passing} tests passed)"
    # Candidates ran only the tests that passed, named one by one; times per phase.
    assert plan["candidate_command"] != plan["command"]
    assert plan["baseline_s"] > 0 and breaker["regression_s"] > 0
    assert f"regression tests: {case.method}: {case.passing} passing" in printed
    assert "warning" not in printed


def test_a_tox_line_needing_a_plugin_falls_through_and_says_so(
    pytest_image: str, tmp_path: Path, client: docker.DockerClient
) -> None:
    """cachetools' tox line asks for --cov: pytest's usage error is recorded, not counted."""
    case = CASES["cachetools"]
    repo = committed_copy(sdist(case.spec), tmp_path / "cachetools")
    report, _ = fix_with_two_candidates(case, repo, tmp_path, client)
    first, second = report["regression"]["attempts"]
    assert (first["method"], first["status"], first["exit_code"]) == ("tox.ini", "usage-error", 4)
    assert "--cov=cachetools" in first["command"]
    assert any("unrecognized arguments: --cov=cachetools" in line for line in first["output_tail"])
    assert (second["method"], second["status"], second["tests"]) == ("pytest", "ok", 214)


def test_no_usable_regression_test_is_a_warning_not_a_silent_zero(
    pytest_image: str, tmp_path: Path, client: docker.DockerClient
) -> None:
    """A --test-cmd that errors and a tree without tests: every way is recorded, one warning."""
    case = CASES["exceptiongroup"]
    repo = committed_copy(sdist(case.spec), tmp_path / "exceptiongroup")
    shutil.rmtree(repo / "tests")
    (repo / "pyproject.toml").write_text("[project]\nname = 'exceptiongroup'\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "no tests")
    report, printed = fix_with_two_candidates(
        case, repo, tmp_path, client, "--test-cmd", "python -m pytest -rA --no-such-flag"
    )
    plan = report["regression"]
    assert plan["status"] == "none" and plan["tests"] == []
    statuses = [(a["method"], a["status"]) for a in plan["attempts"]]
    assert statuses == [("--test-cmd", "usage-error"), ("none", "refused")]
    warnings = [line for line in printed.splitlines() if "warning" in line]
    assert warnings == [
        "warning: no regression test could be used (--test-cmd: usage-error; none: refused): "
        "see tts.json"
    ]


# -- a classic SWE-bench row --------------------------------------------------

MARSHMALLOW_LINE = "    return is_iterable_but_not_string(obj) and not isinstance(obj, Mapping)\n"
NEW_TEST = "\n\ndef test_is_collection_of_a_set():\n    assert utils.is_collection({1})\n"


@pytest.fixture(scope="module")
def marshmallow_row(
    client: docker.DockerClient, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, object], str]]:
    """marshmallow 3.0.0 committed at /testbed of an image, and a classic row for it:
    no image, test command or parser of its own; its test patch changes one test
    file and adds another."""
    root = tmp_path_factory.mktemp("marshmallow")
    repo = committed_copy(sdist("marshmallow==3.0.0"), root / "testbed")
    tests = repo / "tests" / "test_utils.py"
    original = tests.read_text()
    tests.write_text(original + NEW_TEST)
    (repo / "tests" / "test_added.py").write_text("def test_added():\n    assert True\n")
    git(repo, "add", "-A", "--intent-to-add")
    test_patch = git(repo, "diff")
    git(repo, "reset", "-q")
    tests.write_text(original)
    (repo / "tests" / "test_added.py").unlink()
    build_image(client, base_image, SWEBENCH_IMAGE, repo, root / "ctx")
    row = {
        "instance_id": "marshmallow-code__marshmallow-9001",
        "repo": "marshmallow-code/marshmallow",
        "version": "3.0",
        "base_commit": git(repo, "rev-parse", "HEAD").strip(),
        "problem_statement": "Say in utils.is_collection why mappings are not collections.\n",
        "test_patch": test_patch,
        "FAIL_TO_PASS": "[]",
        "PASS_TO_PASS": "[]",
    }
    yield row, SWEBENCH_IMAGE
    client.images.remove(SWEBENCH_IMAGE, force=True)


def test_a_classic_row_runs_its_spec_test_command_over_the_test_patch_files(
    marshmallow_row: tuple[dict[str, object], str], tmp_path: Path, client: docker.DockerClient
) -> None:
    row, image = marshmallow_row
    dataset = tmp_path / "dataset.jsonl"
    dataset.write_text(json.dumps(row) + "\n")
    case = Case(
        "marshmallow==3.0.0",
        "src/marshmallow/utils.py",
        MARSHMALLOW_LINE,
        "    return is_iterable_but_not_string(obj)\n",
        "swebench",
        "pytest -rA tests/test_utils.py",
        0,
        1,
        ("tests/test_utils.py::test_is_collection",),
    )
    write_replays(tmp_path / "replays" / str(row["instance_id"]), case)
    out = tmp_path / "run"
    code, _, stderr = run_owned(
        [
            *("swebench", "run", "--dataset", str(dataset), "--image-template", image),
            *("--model", f"replay:{tmp_path / 'replays'}", "--output", str(out)),
            *("--samples", "2", "--quiet"),
        ],
        client,
    )
    assert code == 0, stderr
    folder = out / "trajectories" / str(row["instance_id"])
    report = json.loads((folder / "tts.json").read_text())
    plan = report["regression"]
    assert (plan["status"], plan["method"], plan["runner"]) == (
        "ok",
        "swebench",
        "parse_log_pytest",
    )
    # The spec's `pytest -rA` over the one test patch file that exists before it.
    assert plan["command"] == case.command
    assert "1 of 2 test patch files" in plan["why"] and "without the test patch" in plan["why"]
    assert plan["tests"] and all(t.startswith("tests/test_utils.py::") for t in plan["tests"])
    assert "tests/test_utils.py::test_is_collection_of_a_set" not in plan["tests"]
    # Some parametrized ids hold spaces, which pytest's summary cuts: candidates run by file.
    assert plan["candidate_command"] == "pytest -rA tests/test_utils.py"
    breaker, keeper = report["candidates"]
    failed = [test for test, passed in breaker["regression"].items() if not passed]
    assert failed == ["tests/test_utils.py::test_is_collection"]
    assert all(keeper["regression"].values())
    assert report["selected"] == 1
    [prediction] = [
        json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()
    ]
    assert prediction["model_patch"] == keeper["patch"]
