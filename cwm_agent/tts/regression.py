"""Regression tests: which command runs the repository's tests, and which tests count.

Ways to run the tests are tried in order until one gives tests that pass on
the original code: a benchmark row's own command (`swebench/grading.py`),
`--test-cmd`, tox.ini's test command (`tox.py`), pytest (its config in
pyproject.toml, setup.cfg, pytest.ini or tox.ini, else test files named like
tests), unittest discovery. A way that is refused, exits with a usage error,
collects nothing, passes nothing or times out is recorded with its exit code
and last lines of output, and the next one is tried: never a silent zero.
Output is split into per-test outcomes (pytest `-rA`, unittest `-v`, or a
harness log parser); a command whose output cannot be split is one test.
Only tests passing on the original code count, and candidates run only those.
When every way outruns `--regression-timeout`, the suite is narrowed to the
test files that mention the modules the candidates change.
"""

from __future__ import annotations

import configparser
import re
import shlex
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, Field

from cwm_agent.tts.tox import ToxCommand, ToxRefused, read_tox
from cwm_agent.workspace import CommandRun, StartSandbox

PYTEST = "python -m pytest -rA -p no:cacheprovider"
UNITTEST = "python -m unittest -v"
_PYTEST_LINE = re.compile(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS|SKIPPED) (\S+)", re.MULTILINE)
_UNITTEST_TEST = re.compile(r"^(\w+) \(([\w.]+)\)")
_UNITTEST_STATUS = re.compile(
    r"(?:^|\.\.\. )(ok|FAIL|ERROR|skipped|expected failure|unexpected success)\b"
)
_TEST_FILES = r"(^|/)(test_[^/]*|[^/]*_test)\.py$"
_NODE_ID = re.compile(r"^\S+::\S+$")
TAIL_LINES = 15

Status = Literal[
    "ok", "refused", "timed-out", "usage-error", "no-tests", "no-passing-tests", "error"
]
Parse = Callable[[str], dict[str, bool]]  # output -> test id -> passed


@dataclass(frozen=True)
class Method:
    """One way to run the regression tests: the command, how to read its output
    (`parse`; None: the command is one test, passing when it exits 0), and the
    command over just some tests (`only`; None: candidates run the whole command)."""

    name: str
    why: str
    command: str
    runner: str  # "pytest", "unittest", a harness log parser's name, or "command"
    parse: Parse | None
    only: Callable[[list[str]], str] | None = None

    def outcomes(self, run: CommandRun) -> dict[str, bool]:
        if self.parse is None:
            return {self.command: run.exit_code == 0}
        return self.parse(run.output)


@dataclass(frozen=True)
class Refused:
    """A way that cannot run at all (tox.ini needs tox for it, say)."""

    name: str
    why: str


Detector = Callable[[StartSandbox], list[Method | Refused]]


class Attempt(BaseModel):
    """One way tried on the original code, and what came of it."""

    method: str
    why: str
    command: str | None = None
    status: Status
    exit_code: int | None = None
    duration_s: float = 0.0
    tests: int = Field(0, description="tests passing on the original code")
    output_tail: list[str] = Field(default_factory=list, description="last lines, when not ok")


class RegressionPlan(BaseModel):
    """The regression tests: how they were found, and those that pass on the original code."""

    status: Literal["ok", "none"] = "none"
    method: str | None = None
    why: str = "not run"
    command: str | None = Field(None, description="run once on the original code")
    candidate_command: str | None = Field(
        None, description="run on each candidate: only the tests that passed on the original"
    )
    runner: str = "none"
    tests: list[str] = Field(default_factory=list)
    narrowed_to: list[str] = Field(default_factory=list)
    attempts: list[Attempt] = Field(default_factory=list)
    baseline_s: float = Field(0.0, description="seconds of test runs on the original code")

    def warning(self) -> str | None:
        """The one line to print when no regression test could be used."""
        if self.status == "ok":
            return None
        tried = "; ".join(f"{a.method}: {a.status}" for a in self.attempts) or self.why
        return f"warning: no regression test could be used ({tried}): see tts.json"


def judge(method: Method, run: CommandRun) -> tuple[Status, dict[str, bool]]:
    """What one run on the original code says, and its per-test outcomes."""
    if run.timed_out:
        return "timed-out", {}
    if method.runner == "pytest" and run.exit_code in (3, 4):
        return "usage-error", {}
    found = method.outcomes(run)
    if not found:
        return ("no-tests" if run.exit_code in (0, 5) else "error"), {}
    if not any(found.values()):
        return "no-passing-tests", found
    return "ok", found


def attempt(method: Method, run: CommandRun | None, status: Status, passing: int) -> Attempt:
    tail = [] if run is None or status == "ok" else run.output.splitlines()[-TAIL_LINES:]
    return Attempt(
        method=method.name,
        why=method.why,
        command=method.command,
        status=status,
        exit_code=None if run is None else run.exit_code,
        duration_s=0.0 if run is None else run.duration_s,
        tests=passing,
        output_tail=tail,
    )


# -- the ways, for a repository of one's own (`fix`, `ci`) -----------------------


def detect(tree: StartSandbox, test_cmd: str | None) -> list[Method | Refused]:
    """The ways to try on this repository, in order."""
    given = (
        [Method("--test-cmd", "given with --test-cmd", test_cmd, *_family(test_cmd))]
        if test_cmd
        else []
    )
    ways: list[Method | Refused] = []
    files = _shell(tree, "git ls-files").splitlines()
    if "tox.ini" in files:
        ways.append(_tox_method(tree))
    tests = [f for f in files if re.search(_TEST_FILES, f)]
    config = _pytest_config(tree, files)
    if config is not None:
        ways.append(pytest_method([], "pytest", f"its config in {config}"))
    if tests:
        if config is None:
            ways.append(pytest_method([], "pytest", f"{len(tests)} test files"))
        top = sorted({PurePosixPath(f).parts[0] for f in tests if len(PurePosixPath(f).parts) > 1})
        start = next((d for d in ("tests", "test") if d in top), ".")
        command = f"python -m unittest discover -v -s {start}"
        ways.append(_unittest(command, "unittest", f"{len(tests)} test files"))
    if not ways:
        ways.append(Refused("none", "no test files (test_*.py, *_test.py) and no test config"))
    return [*given, *ways]


def pytest_method(targets: list[str], name: str, why: str) -> Method:
    """pytest at the repository root over `targets` (none: what its config says)."""
    command = " ".join([PYTEST, *map(shlex.quote, targets)])
    return Method(name, why, command, "pytest", pytest_outcomes, partial(pytest_over, PYTEST))


def pytest_outcomes(output: str) -> dict[str, bool]:
    return {name: status in ("PASSED", "XFAIL") for status, name in _PYTEST_LINE.findall(output)}


def unittest_outcomes(output: str) -> dict[str, bool]:
    """`unittest -v` lines: `name (id) ... status`, the status perhaps a few lines
    on (a docstring, or a warning the test printed, comes between)."""
    found: dict[str, bool] = {}
    test = None
    for line in output.splitlines():
        start = _UNITTEST_TEST.match(line)
        if start is not None:
            name, where = start.groups()
            test = where if where.endswith(name) else f"{where}.{name}"
        status = _UNITTEST_STATUS.search(line[start.end() :] if start else line)
        if test is not None and status is not None:
            found[test], test = status.group(1) in ("ok", "expected failure"), None
    return found


def node_ids_or_files(ids: list[str]) -> list[str]:
    """pytest arguments for these tests: their node ids, or their files when an id
    was cut at a space in a parameter by pytest's summary line."""
    if all(_NODE_ID.match(test) and test.count("[") == test.count("]") for test in ids):
        return ids
    return sorted({test.split("::")[0] for test in ids})


def pytest_over(before: str, ids: list[str]) -> str:
    """A pytest command line `before` over just these tests."""
    return " ".join([before, *map(shlex.quote, node_ids_or_files(ids))])


def _unittest(command: str, name: str, why: str) -> Method:
    """unittest; its candidates' runs keep only the given tests (`-k`, one per test)."""

    def only(ids: list[str]) -> str:
        return " ".join([command, *(f"-k {shlex.quote(test)}" for test in ids)])

    return Method(name, why, command, "unittest", unittest_outcomes, only)


def _family(command: str) -> tuple[str, Parse | None]:
    if "pytest" in command or "py.test" in command:
        return "pytest", pytest_outcomes
    if "unittest" in command:
        return "unittest", unittest_outcomes
    return "command", None


def _tox_method(tree: StartSandbox) -> Method | Refused:
    name = "tox.ini"
    try:
        text = tree.box.read_file(f"{tree.workdir}/tox.ini").decode("utf-8", "replace")
        environ = dict(
            line.split("=", 1) for line in _shell(tree, "env").splitlines() if "=" in line
        )
        tox = read_tox(text, tree.workdir, environ)
    except (ToxRefused, OSError) as exc:
        return Refused(name, f"tox.ini's [testenv] command refused: {exc}")
    why = f"tox.ini's [testenv] command `{tox.line}`, substituted as tox does, run without tox"
    runner, parse = _family(" ".join(tox.before))
    tox = _runner_flags(tox, runner)
    only: Callable[[list[str]], str] | None = None
    if runner == "pytest" and not tox.cwd:  # node ids are relative to the root
        only = lambda ids: tox.shell(node_ids_or_files(ids))  # noqa: E731
    elif runner == "unittest":
        only = lambda ids: _with_keywords(tox, ids).shell()  # noqa: E731
    return Method(name, why, tox.shell(), runner, parse, only)


def _runner_flags(tox: ToxCommand, runner: str) -> ToxCommand:
    """Make the runner report each test: pytest as `python -m pytest -rA`, unittest `-v`."""
    before = list(tox.before)
    if runner == "pytest":
        if before[0] in ("pytest", "py.test"):
            before[:1] = ["python", "-m", "pytest"]
        before += [] if "-rA" in before else ["-rA"]
        before += [] if "no:cacheprovider" in before else ["-p", "no:cacheprovider"]
    elif runner == "unittest" and not {"-v", "--verbose"} & set(before):
        before.append("-v")
    return replace(tox, before=before)


def _with_keywords(tox: ToxCommand, ids: list[str]) -> ToxCommand:
    return replace(tox, before=[*tox.before, *(word for test in ids for word in ("-k", test))])


def _pytest_config(tree: StartSandbox, files: list[str]) -> str | None:
    """Where pytest's own config is, as pytest looks for it at the root, or None."""
    read = {
        name: tree.box.read_file(f"{tree.workdir}/{name}").decode("utf-8", "replace")
        for name in ("pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")
        if name in files
    }
    if "pytest.ini" in read:
        return "pytest.ini"
    if "pyproject.toml" in read:
        try:
            tools = tomllib.loads(read["pyproject.toml"]).get("tool", {})
        except tomllib.TOMLDecodeError:
            tools = {}
        if "ini_options" in tools.get("pytest", {}):
            return "pyproject.toml [tool.pytest.ini_options]"
    for name, section in (("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(read.get(name, ""))
        except configparser.Error:
            continue
        if parser.has_section(section):
            return f"{name} [{section}]"
    return None


# -- narrowing a suite that runs too long ----------------------------------------


def narrowed(
    tree: StartSandbox, method: Method, patches: Iterable[bytes]
) -> tuple[Method, list[str]] | None:
    """The method limited to the test files that mention a changed module, if any."""
    if method.runner not in ("pytest", "unittest"):
        return None
    stems = sorted(
        {
            PurePosixPath(path).stem
            for patch in patches
            for path in changed_files(patch)
            if path.endswith(".py") and not re.search(_TEST_FILES, path)
        }
    )
    if not stems:
        return None
    mentions = r"\b(" + "|".join(re.escape(stem) for stem in stems) + r")\b"
    found = _shell(
        tree,
        f"git ls-files | grep -E {shlex.quote(_TEST_FILES)} | "
        f"xargs -r grep -l -E {shlex.quote(mentions)} --",
    ).split()
    if not found:
        return None
    why = f"{method.why}; narrowed to files naming changed modules"
    if method.runner == "pytest":
        return pytest_method(found, method.name, why), found
    command = " ".join([UNITTEST, *map(shlex.quote, found)])
    return _unittest(command, method.name, why), found


def changed_files(patch: bytes) -> list[str]:
    """Paths a git patch touches (the new path of a rename)."""
    text = patch.decode("utf-8", "surrogateescape")
    return re.findall(r"^diff --git a/\S+ b/(\S+)$", text, re.MULTILINE)


def _shell(tree: StartSandbox, script: str) -> str:
    _, out, _ = tree.box.exec(["bash", "-c", script], workdir=tree.workdir)
    return out.decode("utf-8", "replace")
