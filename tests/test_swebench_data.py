"""SWE-bench rows, image names, eval scripts and grading, without containers.

Real Verified rows come from the shared data file (skipped where it is absent);
logs are written in each framework's real output format and graded both by us
and by the official harness's `get_eval_report`, which must agree.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from swebench.harness.grading import get_eval_report
from swebench.harness.run_evaluation import GIT_APPLY_CMDS

from cwm_agent.model.tokens import message_counter
from cwm_agent.protocol.chat import USER
from cwm_agent.protocol.prompts import issue_prompt
from cwm_agent.swebench.dataset import Instance, load_instances, select
from cwm_agent.swebench.errors import SwebenchError
from cwm_agent.swebench.evaluate import GIT_APPLY_CMDS as OUR_APPLY_CMDS
from cwm_agent.swebench.grading import eval_plan, grade
from cwm_agent.swebench.images import image_for
from cwm_agent.swebench.predictions import Prediction, PredictionsFile, read_predictions
from tests.conftest import run_cli
from tests.helpers import SAMPLE_ISSUE

ROOT = Path(__file__).parent.parent
VERIFIED = Path(
    os.environ.get("CWM_AGENT_VERIFIED", ROOT.parent / "shared/data/swebench-verified.jsonl")
)
HEAD = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def verified() -> dict[str, Instance]:
    if not VERIFIED.is_file():
        pytest.skip(f"no Verified rows at {VERIFIED} (set CWM_AGENT_VERIFIED)")
    return {i.instance_id: i for i in load_instances(str(VERIFIED))}


def test_every_verified_row_parses(verified: dict[str, Instance]) -> None:
    raw = [json.loads(line) for line in VERIFIED.read_text().splitlines()]
    assert len(verified) == len(raw) == 500
    for row in raw:
        instance = verified[row["instance_id"]]
        assert json.loads(row["FAIL_TO_PASS"]) == instance.FAIL_TO_PASS
        assert json.loads(row["PASS_TO_PASS"]) == instance.PASS_TO_PASS
        assert instance.FAIL_TO_PASS, "every Verified instance has a failing test to fix"
        assert instance.repo and instance.base_commit and instance.version and instance.difficulty
        assert instance.test_patch.startswith("diff --git")
        assert instance.patch and instance.patch.startswith("diff --git")
        assert instance.row()["hints_text"] == row["hints_text"]  # extras kept for the harness
        plan = eval_plan(instance, HEAD)  # every row has a test script from the 4.x specs
        assert f"git checkout {HEAD} " in plan.script and instance.base_commit not in plan.script


def test_prompt_of_a_real_instance_is_section_4(verified: dict[str, Instance]) -> None:
    instance = verified["astropy__astropy-12907"]
    golden = (ROOT / "tests/golden/issue_prompt.txt").read_text()
    issue = instance.problem_statement.strip()
    expected = golden.replace(SAMPLE_ISSUE, issue)
    assert expected != golden
    assert issue_prompt(issue, "/testbed", message_counter(None, USER)) == expected


def test_official_image_names_and_templates(verified: dict[str, Instance]) -> None:
    instance = verified["django__django-11099"]
    assert image_for(instance) == "swebench/sweb.eval.x86_64.django_1776_django-11099:latest"
    assert image_for(instance, "mirror/{instance_id}:v1") == "mirror/django__django-11099:v1"
    own = instance.model_copy(update={"image": "team/django:11099"})
    assert image_for(own) == "team/django:11099"
    row = {key: value for key, value in own.row().items() if key != "image"}
    assert Instance.model_validate({**row, "image_name": "x:y"}).image == "x:y"
    with pytest.raises(SwebenchError, match="image-template"):
        image_for(instance, "{repo}")


def _django_log(instance: Instance, failing: set[str]) -> str:
    lines = [
        f"{test} ... {'FAIL' if test in failing else 'ok'}"
        for test in instance.FAIL_TO_PASS + instance.PASS_TO_PASS
    ]
    return (
        "+ ./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1 "
        "auth_tests.test_validators\nTesting against Django installed in '/testbed/django'\n"
        "Importing application auth_tests\nSkipping setup of unused database(s): other.\n"
        + "\n".join(lines)
        + f"\n\n{'-' * 70}\nRan {len(lines)} tests in 0.113s\n\nOK\n"
    )


def _sympy_log(instance: Instance, failing: set[str]) -> str:
    lines = [
        f"{test} {'F' if test in failing else 'ok'}"
        for test in instance.FAIL_TO_PASS + instance.PASS_TO_PASS
    ]
    return (
        "============================= test process starts ==============================\n"
        "executable:         /opt/miniconda3/envs/testbed/bin/python  (3.9.19-final-0)\n"
        "sympy/geometry/tests/test_point.py[5] \n" + "\n".join(lines) + "\n\n"
        "================== tests finished: 5 passed, in 0.35 seconds ===================\n"
    )


def _pytest_log(instance: Instance, failing: set[str]) -> str:
    lines = [
        f"\x1b[31mFAILED\x1b[0m {test} - AssertionError"
        if test in failing
        else f"\x1b[32mPASSED\x1b[0m {test}"
        for test in instance.FAIL_TO_PASS + instance.PASS_TO_PASS
    ]
    return (
        "============================= test session starts ==============================\n"
        "collected 15 items\n\nastropy/modeling/tests/test_separable.py ...............\n\n"
        "=========================== short test summary info ============================\n"
        + "\n".join(lines)
        + "\n============================== 15 passed in 0.2s ===============================\n"
    )


@pytest.mark.parametrize(
    ("instance_id", "make_log"),
    [
        ("django__django-11099", _django_log),
        ("sympy__sympy-11618", _sympy_log),
        ("astropy__astropy-12907", _pytest_log),
    ],
)
@pytest.mark.parametrize("outcome", ["resolved", "f2p fails", "p2p fails", "no markers"])
def test_grading_matches_the_official_harness(
    verified: dict[str, Instance], instance_id: str, make_log, outcome: str, tmp_path: Path
) -> None:
    instance = verified[instance_id]
    failing = {
        "resolved": set(),
        "f2p fails": {instance.FAIL_TO_PASS[0]},
        "p2p fails": {instance.PASS_TO_PASS[-1]},
        "no markers": set(),
    }[outcome]
    tests = make_log(instance, failing)
    plan = eval_plan(instance, HEAD)
    if outcome == "no markers":
        log = f"+ source /opt/miniconda3/bin/activate\n{tests}"
    else:
        log = (
            f"+ git apply -v -\n+ : '>>>>> Start Test Output'\n{tests}+ : '>>>>> End Test Output'\n"
        )
    ours = grade(instance, log, plan)

    path = tmp_path / "test_output.txt"
    path.write_text(log)
    prediction = {"instance_id": instance_id, "model_name_or_path": "m", "model_patch": "diff"}
    official = get_eval_report(plan.spec, prediction, str(path), True)
    official = official[instance_id]
    assert ours.resolved is official["resolved"] is (outcome == "resolved")
    assert ours.tests_ran is official["patch_successfully_applied"] is (outcome != "no markers")
    if ours.tests_status is not None:
        for key, status in ours.tests_status.items():
            assert status.model_dump() == official["tests_status"][key]


def test_custom_rows_use_their_command_and_parser() -> None:
    row = {
        "instance_id": "team__app-7",
        "problem_statement": "x() is wrong",
        "image": "team/app:7",
        "test_cmd": "python -m pytest -rA tests/test_x.py",
        "test_patch": "diff --git a/tests/test_x.py b/tests/test_x.py\n--- a/tests/test_x.py\n"
        "+++ b/tests/test_x.py\n@@ -1 +1,2 @@\n import x\n+def test_new(): assert x.x()\n",
        "FAIL_TO_PASS": ["tests/test_x.py::test_new"],
        "PASS_TO_PASS": '["tests/test_x.py::test_old"]',
    }
    instance = Instance.model_validate(row)
    plan = eval_plan(instance, HEAD)
    assert f"git checkout {HEAD} -- tests/test_x.py" in plan.script
    assert "python -m pytest -rA tests/test_x.py" in plan.script
    log = (
        ": '>>>>> Start Test Output'\nPASSED tests/test_x.py::test_old\n"
        "PASSED tests/test_x.py::test_new\n: '>>>>> End Test Output'\n"
    )
    assert grade(instance, log, plan).resolved  # pytest's parser by default
    failed = log.replace("PASSED tests/test_x.py::test_new", "FAILED tests/test_x.py::test_new")
    assert not grade(instance, failed, plan).resolved
    unittest = instance.model_copy(update={"log_parser": "parse_log_nope"})
    with pytest.raises(SwebenchError, match="unknown log_parser 'parse_log_nope'"):
        eval_plan(unittest, HEAD)
    unknown = instance.model_copy(update={"test_cmd": None, "repo": "team/app"})
    with pytest.raises(SwebenchError, match="no way to run its tests"):
        eval_plan(unknown, HEAD)


def test_log_parsers_go_by_the_harness_name_or_the_short_one() -> None:
    """The previous release's rows name parsers as `django`; the harness's as
    `parse_log_django`: both grade alike."""
    row = {
        "instance_id": "team__app-8",
        "problem_statement": "x() is wrong",
        "image": "team/app:8",
        "test_cmd": "python -m unittest -v tests.test_x",
        "FAIL_TO_PASS": ["test_new (tests.test_x.T.test_new)"],
        "PASS_TO_PASS": [],
    }
    log = ": '>>>>> Start Test Output'\ntest_new (tests.test_x.T.test_new) ... ok\n"
    log += ": '>>>>> End Test Output'\n"
    for name in ("parse_log_django", "django"):
        instance = Instance.model_validate({**row, "log_parser": name})
        assert grade(instance, log, eval_plan(instance, HEAD)).resolved, name
    wrong = Instance.model_validate({**row, "log_parser": "nope"})
    with pytest.raises(SwebenchError, match=r"unknown log_parser 'nope'.*django"):
        eval_plan(wrong, HEAD)


def test_a_test_patch_that_only_adds_files_is_applied(tmp_path: Path) -> None:
    """The custom-row script run for real, by bash on a git repository."""
    repo = tmp_path / "app"
    repo.mkdir()
    (repo / "x.py").write_text("def x():\n    return 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "-C", str(repo)]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "start"]):
        subprocess.run([*git, *args], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    instance = Instance.model_validate(
        {
            "instance_id": "team__app-8",
            "problem_statement": "x() is wrong",
            "image": "team/app:8",
            "test_cmd": "cat test_new.py",
            "test_patch": "diff --git a/test_new.py b/test_new.py\nnew file mode 100644\n"
            "--- /dev/null\n+++ b/test_new.py\n@@ -0,0 +1 @@\n+added by the test patch\n",
            "FAIL_TO_PASS": ["test_new"],
            "PASS_TO_PASS": [],
        }
    )
    script = eval_plan(instance, head.strip(), str(repo)).script
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(tmp_path)},  # the script sets a global git option
    )
    tests = done.stdout.split(">>>>> Start Test Output")[-1]
    assert "added by the test patch" in tests


def test_rows_in_the_5x_format_use_their_script_at_the_start_head(
    verified: dict[str, Instance],
) -> None:
    classic = verified["django__django-11099"]
    script = eval_plan(classic, classic.base_commit or "").script  # as 5.x rows carry it
    row = {**classic.row(), "eval_script": script, "log_parser": "parse_log_django"}
    plan = eval_plan(Instance.model_validate(row), HEAD)
    assert plan.script == script.replace(classic.base_commit or "", HEAD)
    assert plan.parser.__name__ == "parse_log_django"


def test_local_files_in_every_format(tmp_path: Path) -> None:
    rows = [
        {"instance_id": "a__b-1", "problem_statement": "one", "FAIL_TO_PASS": '["t1"]'},
        {"instance_id": "a__b-2", "problem_statement": "two", "FAIL_TO_PASS": ["t2"]},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    import pyarrow
    import pyarrow.parquet

    table = pyarrow.Table.from_pylist([{**r, "FAIL_TO_PASS": json.dumps(["t"])} for r in rows])
    pyarrow.parquet.write_table(table, tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.json", "d.parquet"):
        found = load_instances(str(tmp_path / name))
        assert [i.instance_id for i in found] == ["a__b-1", "a__b-2"]
        assert found[0].FAIL_TO_PASS in (["t1"], ["t"])
    found = load_instances(str(tmp_path / "d.jsonl"))
    assert [i.instance_id for i in select(found, ["a__b-2"])] == ["a__b-2"]
    assert [i.instance_id for i in select(found, span="1:")] == ["a__b-2"]
    with pytest.raises(SwebenchError, match="not in the dataset: zz"):
        select(found, ["zz"])
    with pytest.raises(SwebenchError, match="expected A:B"):
        select(found, span="1")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"instance_id": "a__b-1"}\n', "a__b-1: invalid problem_statement: Field required"),
        ('{"instance_id": "a/../b", "problem_statement": "x"}\n', "invalid instance_id"),
        ('{"instance_id": "a", "problem_statement": "x", "FAIL_TO_PASS": "[oops"}\n', "FAIL_TO"),
        ("not json\n", "cannot read dataset"),
        ('{"instance_id": "a", "problem_statement": "x"}\n' * 2, "appears twice"),
        # issue 13.13: the file's line, not the column inside the row; blank statements
        (
            '{"instance_id": "a", "problem_statement": "x"}\n\n{"instance_id": "b", oops}\n',
            "line 3 is not JSON (Expecting property name enclosed in double quotes at column 22)",
        ),
        (
            '{"instance_id": "a", "problem_statement": " \\n\\t "}\n',
            "a: invalid problem_statement: Value error, the problem statement is blank",
        ),
    ],
)
def test_malformed_rows_are_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(SwebenchError, match=re.escape(message)):
        load_instances(str(path))


def test_predictions_file_is_rewritten_whole(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    store = PredictionsFile(path)
    for n in (1, 2, 1):
        store.add(Prediction(instance_id=f"i{n}", model_name_or_path="m", model_patch=f"p{n}"))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["instance_id"] for line in lines] == ["i1", "i2"]
    assert set(lines[0]) == {"instance_id", "model_name_or_path", "model_patch"}
    assert read_predictions(path) == PredictionsFile(path).done
    assert not list(tmp_path.glob("*.tmp"))


def test_apply_commands_are_the_harness_own() -> None:
    assert list(OUR_APPLY_CMDS) == GIT_APPLY_CMDS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "--dataset", "missing.jsonl", "--model", "replay:x", "--output", "o"],
            "not found",
        ),
        (["eval", "--predictions", "nope.jsonl", "--dataset", "d.jsonl"], "nope.jsonl not found"),
        (["report", "nothing-here"], "is not a folder"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    done = run_cli("swebench", *args, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
