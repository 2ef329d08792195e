"""Test scripts and grading, done by the official `swebench` harness's own code.

Only two things differ from the harness, both so custom images work: test
files are reset to the container's starting HEAD (the image need not hold
`base_commit`), and rows outside the harness's specs bring their own test
command or script and name their log parser.

Test-time scaling's regression tests come from here too (`regression_ways`),
as Agentless and CWM run them: the instance's own test command over the test
files its test patch touches, on the original code, parsed by the same log
parser as grading. Only the test patch's file names are used, never its content.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydantic import BaseModel
from swebench.harness.constants import (
    APPLY_PATCH_FAIL,
    END_TEST_OUTPUT,
    FAIL_ONLY_REPOS,
    FAIL_TO_PASS,
    KEY_INSTANCE_ID,
    MAP_REPO_TO_EXT,
    MAP_REPO_VERSION_TO_SPECS,
    PASS_TO_PASS,
    RESET_FAILED,
    START_TEST_OUTPUT,
    TESTS_ERROR,
    TESTS_TIMEOUT,
    EvalType,
    ResolvedStatus,
    TestStatus,
)
from swebench.harness.grading import get_eval_tests_report, get_resolution_status
from swebench.harness.log_parsers import (
    MAP_REPO_TO_PARSER,
    c,
    go,
    java,
    javascript,
    php,
    python,
    ruby,
    rust,
)
from swebench.harness.test_spec.create_scripts import make_eval_script_list
from swebench.harness.test_spec.test_spec import TestSpec
from swebench.harness.utils import get_modified_files

from cwm_agent.sandbox import WORKDIR
from cwm_agent.swebench.dataset import Instance
from cwm_agent.swebench.errors import SwebenchError
from cwm_agent.tts.regression import (
    Detector,
    Method,
    Refused,
    changed_files,
    detect,
    pytest_over,
)
from cwm_agent.workspace import StartSandbox

Parser = Callable[[str, TestSpec], dict[str, str]]

# Parsers by name, as 5.x rows' `log_parser` spells them (`parse_log_django`, ...).
PARSERS: dict[str, Parser] = {
    name: value
    for module in (c, go, java, javascript, php, python, ruby, rust)
    for name, value in vars(module).items()
    if name.startswith("parse_log_") and callable(value)
}
DEFAULT_PARSER = "parse_log_pytest"
HEREDOC = "EOF_114329324912"  # the harness's own delimiter


@dataclass(frozen=True)
class EvalPlan:
    """What to run in the instance's container, and the spec its parser is given."""

    script: str
    spec: TestSpec
    parser: Parser


def eval_plan(instance: Instance, head: str, workdir: str = WORKDIR) -> EvalPlan:
    """The test script for an instance whose container starts at `head`."""
    row = {**instance.row(), "base_commit": head}
    if instance.test_cmd is not None:
        spec = _bare_spec(instance)
        return EvalPlan(_custom_script(instance, head, workdir), spec, _parser(instance))
    if instance.eval_script is not None:
        script = instance.eval_script
        if instance.base_commit:
            script = script.replace(instance.base_commit, head)
        return EvalPlan(script, _bare_spec(instance), _parser(instance))
    specs = MAP_REPO_VERSION_TO_SPECS.get(instance.repo, {}).get(instance.version or "")
    if specs is not None:
        # What make_test_spec does for the eval script alone (it also fetches the
        # environment's requirements from GitHub, which grading does not need).
        script = make_eval_script_list(row, specs, "testbed", workdir, head, instance.test_patch)
        spec = _bare_spec(instance, script, MAP_REPO_TO_EXT[instance.repo])
        return EvalPlan(spec.eval_script, spec, _parser(instance))
    raise SwebenchError(
        f"{instance.instance_id}: no way to run its tests: the row needs `test_cmd` or "
        f"`eval_script`, or a repo/version the swebench package knows ({instance.repo} "
        f"{instance.version} is not one)"
    )


def regression_ways(instance: Instance) -> Detector:
    """The instance's test command first, then the repository's own ways."""

    def ways(tree: StartSandbox) -> list[Method | Refused]:
        _, out, _ = tree.box.exec(["git", "ls-files"], workdir=tree.workdir)
        return [_instance_way(instance, set(out.decode().splitlines())), *detect(tree, None)]

    return ways


def _instance_way(instance: Instance, tracked: set[str]) -> Method | Refused:
    """The command grading runs, without the test patch: for a classic row the
    spec's `test_cmd` over the directives the harness derives from the test
    patch's files that exist before it (a file it adds cannot be run yet)."""
    name, parser, spec = "swebench", _parser(instance), _bare_spec(instance)
    names = changed_files(instance.test_patch.encode("utf-8", "surrogateescape"))
    present = [f for f in names if f in tracked]
    only: Callable[[list[str]], str] | None = None
    if instance.test_cmd is not None:
        command, why = instance.test_cmd, "the row's test_cmd"
    elif instance.eval_script is not None:
        block = _test_block(instance.eval_script)
        if block is None:
            return Refused(name, "its eval script has no test-output markers")
        command, why = block, "its eval script's test command"
    else:
        specs = MAP_REPO_VERSION_TO_SPECS.get(instance.repo, {}).get(instance.version or "")
        if specs is None:
            return Refused(name, f"{instance.repo} {instance.version} has no harness spec")
        if not present:
            return Refused(name, "none of the files its test patch touches exists before it")
        headers = "".join(f"diff --git a/{f} b/{f}\n" for f in present)  # file names only
        row = {**instance.row(), "test_patch": headers}
        lines = make_eval_script_list(row, specs, "testbed", WORKDIR, "HEAD", headers)
        test_cmd = specs["test_cmd"]
        command = "\n".join([*specs.get("eval_commands", []), _test_block("\n".join(lines)) or ""])
        why = (
            f"the {instance.repo} {instance.version} spec's test_cmd over the "
            f"{len(present)} of {len(names)} test patch files present before it "
            "(only the test patch's file names are used)"
        )
        if isinstance(test_cmd, str) and "pytest" in test_cmd:
            before = "\n".join([*specs.get("eval_commands", []), test_cmd])
            only = partial(pytest_over, before)
    why += f", on the original code without the test patch, parsed by {parser.__name__}"

    def parse(output: str) -> dict[str, bool]:
        passed = (TestStatus.PASSED.value, TestStatus.XFAIL.value)
        return {test: status in passed for test, status in parser(output, spec).items()}

    return Method(name, why, command, parser.__name__, parse, only)


def _test_block(script: str) -> str | None:
    """The lines an eval script runs between its start and end test-output markers."""
    lines = script.splitlines()
    starts = [i for i, line in enumerate(lines) if START_TEST_OUTPUT in line]
    ends = [i for i, line in enumerate(lines) if END_TEST_OUTPUT in line]
    if not starts or not ends or ends[-1] <= starts[0]:
        return None
    return "\n".join(lines[starts[0] + 1 : ends[-1]])


def _parser(instance: Instance) -> Parser:
    """The row's `log_parser` by the harness's name (`parse_log_django`) or, as rows of
    cwm-agent's previous release spell it, the short one (`django`); else the repo's."""
    name = instance.log_parser
    if name is None:
        return MAP_REPO_TO_PARSER.get(instance.repo, PARSERS[DEFAULT_PARSER])
    found = PARSERS.get(name) or PARSERS.get(f"parse_log_{name}")
    if found is None:
        short = [known.removeprefix("parse_log_") for known in sorted(PARSERS)]
        raise SwebenchError(
            f"{instance.instance_id}: unknown log_parser {name!r}: use one of the harness's "
            f"parsers, by its name or without parse_log_ ({', '.join(short)})"
        )
    return found


def _bare_spec(
    instance: Instance, eval_script_list: list[str] | None = None, language: str = "py"
) -> TestSpec:
    """The spec fields that parsers and grading read."""
    return TestSpec(
        instance_id=instance.instance_id,
        repo=instance.repo,
        version=instance.version or "",
        repo_script_list=[],
        eval_script_list=eval_script_list or [],
        env_script_list=[],
        arch="x86_64",
        FAIL_TO_PASS=instance.FAIL_TO_PASS,
        PASS_TO_PASS=instance.PASS_TO_PASS,
        language=language,
        docker_specs={},
        namespace=None,
    )


def _custom_script(instance: Instance, head: str, workdir: str) -> str:
    """The harness's script shape around the row's own test command."""
    # Files the test patch changes go back to the start first; files it adds need no reset.
    files = " ".join(shlex.quote(f) for f in get_modified_files(instance.test_patch))
    reset = f"git checkout {head} -- {files}" if files else ":"
    apply = f"git apply -v - <<'{HEREDOC}'\n{instance.test_patch}\n{HEREDOC}"
    lines = [
        "#!/bin/bash",
        "set -uxo pipefail",
        f"cd {shlex.quote(workdir)}",
        "git config --global --add safe.directory '*'",
        reset,
        apply if instance.test_patch.strip() else ":",
        f": '{START_TEST_OUTPUT}'",
        instance.test_cmd or ":",
        f": '{END_TEST_OUTPUT}'",
        reset,
    ]
    return "\n".join(lines) + "\n"


class TestsStatus(BaseModel):
    success: list[str]
    failure: list[str]


class Grade(BaseModel):
    """The harness's verdict on one test log."""

    resolved: bool
    tests_ran: bool  # False: the harness would find no usable test output
    tests_status: dict[str, TestsStatus] | None = None


def status_map(log: str, plan: EvalPlan) -> tuple[dict[str, str], bool]:
    """`swebench.harness.grading.get_logs_eval`, with the parser chosen per row."""
    if any(code in log for code in (APPLY_PATCH_FAIL, RESET_FAILED, TESTS_ERROR, TESTS_TIMEOUT)):
        return {}, False
    if not (START_TEST_OUTPUT in log and END_TEST_OUTPUT in log):
        return {}, False
    tests = log.split(START_TEST_OUTPUT)[1].split(END_TEST_OUTPUT)[0]
    return plan.parser(tests, plan.spec) or plan.parser(log, plan.spec), True


def grade(instance: Instance, log: str, plan: EvalPlan) -> Grade:
    """FAIL_TO_PASS and PASS_TO_PASS judged by the harness's own report functions."""
    found, ran = status_map(log, plan)
    if not ran:
        return Grade(resolved=False, tests_ran=False)
    gold = {
        KEY_INSTANCE_ID: instance.instance_id,
        FAIL_TO_PASS: instance.FAIL_TO_PASS,
        PASS_TO_PASS: instance.PASS_TO_PASS,
    }
    report: dict[str, Any] = get_eval_tests_report(found, gold, eval_type=_eval_type(instance))
    return Grade(
        resolved=get_resolution_status(report) == ResolvedStatus.FULL.value,
        tests_ran=True,
        tests_status={key: TestsStatus(**report[key]) for key in (FAIL_TO_PASS, PASS_TO_PASS)},
    )


def _eval_type(instance: Instance) -> EvalType:
    declared = (instance.model_extra or {}).get("eval_type")
    if declared:
        return EvalType(declared)
    return EvalType.FAIL_ONLY if instance.repo in FAIL_ONLY_REPOS else EvalType.PASS_AND_FAIL
