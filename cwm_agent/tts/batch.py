"""Running generated tests in a tree: all of them through one interpreter.

Every generated test used to be a fresh `python test_issue.py`, and on a real
project each start re-imports the project (about 1.7 s for sympy), K times M
times. `run_tests` hands a tree's tests to `batch_runner.py`, which imports
what the tests import first, once, then forks a child per test; each child
keeps its own timeout, output and verdict (the runner's docstring says how).

Forking after a preload is only equivalent for a test whose first statements
import those modules anyway. A test that imports a preloaded module later —
after setting an environment variable, say — or imports dynamically runs in a
fresh interpreter instead, inside the same runner. If the runner itself dies
(a test killed it, the container ran out of memory), every test of the batch
is run alone, as before.
"""

from __future__ import annotations

import ast
import base64
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cwm_agent import pyparse
from cwm_agent.tts import generated
from cwm_agent.workspace import OUTPUT_LIMIT, RESET_TREE, CommandRun, StartSandbox

RUNNER = (Path(__file__).with_name("batch_runner.py")).read_bytes()
_DYNAMIC = {"__import__", "import_module", "reload", "exec", "eval"}
_SLACK_S = 10.0  # per test, on top of its timeout: the fork, the output, the tree's reset


@dataclass(frozen=True)
class Plan:
    """What the runner preloads, and which tests may run forked from it."""

    preload: list[str]
    forked: dict[int, bool]


@dataclass
class Batch:
    """The tests' runs, and what running them cost."""

    runs: dict[int, CommandRun] = field(default_factory=dict)
    interpreter_starts: int = 0
    fallback: str | None = None  # why the tests were run alone, if they were


def plan(sources: Mapping[int, bytes]) -> Plan:
    """Preload every module some test imports before anything else; fork a test
    unless it imports one of those later or dynamically."""
    leading, late = {}, {}
    for test, source in sources.items():
        leading[test], late[test] = _imports(source)
    preload = list(dict.fromkeys(name for names in leading.values() for name in names))
    preloaded = {_top(name) for name in preload}
    forked = {
        test: "<dynamic>" not in late[test]
        and not (late[test] & preloaded) - {_top(name) for name in leading[test]}
        for test in sources
    }
    return Plan(preload, forked)


def _imports(source: bytes) -> tuple[list[str], set[str]]:
    """The modules imported before any other statement, and the top-level
    packages of every other import ("<dynamic>" for an import by call)."""
    try:
        tree = pyparse.parse(source.decode("utf-8", "replace"))
    except SyntaxError:
        return [], {"<dynamic>"}  # it will fail on its own; never beside a preload
    body = tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    leading: list[str] = []
    first: set[int] = set()
    for statement in body:
        if isinstance(statement, ast.Import):
            leading += [alias.name for alias in statement.names]
        elif isinstance(statement, ast.ImportFrom) and statement.level == 0 and statement.module:
            if statement.module != "__future__":
                leading.append(statement.module)
        else:
            break
        first.add(id(statement))
    late: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and id(node) not in first:
            late |= {_top(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and id(node) not in first:
            late.add(_top(node.module or "") if node.level == 0 else "<dynamic>")
        elif isinstance(node, ast.Call):
            called = node.func
            name = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", "")
            if name in _DYNAMIC:
                late.add("<dynamic>")
    return leading, late


def _top(module: str) -> str:
    return module.split(".")[0]


def run_tests(tree: StartSandbox, sources: Mapping[int, bytes], timeout: float) -> Batch:
    """Each test's run, as `python test_issue.py` in the repository root would give it."""
    if not sources:
        return Batch()
    batch = plan(sources)
    tag = uuid.uuid4().hex[:8]
    runner, spec, results = (
        f"/tmp/cwm-agent-{what}-{tag}" for what in ("runner.py", "spec", "out")
    )
    tree.box.write_file(runner, RUNNER, mode=0o644)
    tree.box.write_file(spec, json.dumps(_spec(tree, sources, batch, timeout)).encode(), mode=0o644)
    limit = len(sources) * (timeout + _SLACK_S) + 60
    run = tree.run(f"python {runner} {spec} {results}", limit)
    found = tree.box.read(results)
    alone = sum(not fork for fork in batch.forked.values())
    if run.exit_code == 0 and found is not None:
        return Batch(_parse(found[1]), 1 + alone)
    why = "timed out" if run.timed_out else f"exited {run.exit_code}"
    ran = run_alone(tree, sources, timeout)
    ran.interpreter_starts += 1 + alone
    ran.fallback = f"the batch runner {why}: {run.output.strip()[-300:]}"
    return ran


def run_alone(tree: StartSandbox, sources: Mapping[int, bytes], timeout: float) -> Batch:
    """Each test in a fresh interpreter, one after another."""
    runs = {
        test: tree.run(generated.TEST_COMMAND, timeout, {generated.TEST_FILE: source})
        for test, source in sources.items()
    }
    return Batch(runs, len(runs))


def _spec(
    tree: StartSandbox, sources: Mapping[int, bytes], batch: Plan, timeout: float
) -> dict[str, object]:
    return {
        "workdir": tree.workdir,
        "test_file": generated.TEST_FILE,
        "reset": RESET_TREE,
        "output_limit": OUTPUT_LIMIT,
        "preload": batch.preload,
        "tests": [
            {
                "id": test,
                "source": base64.b64encode(source).decode(),
                "timeout": timeout,
                "fork": batch.forked[test],
            }
            for test, source in sources.items()
        ],
    }


def _parse(data: bytes) -> dict[int, CommandRun]:
    return {
        entry["id"]: CommandRun(
            generated.TEST_COMMAND,
            entry["exit_code"],
            entry["output"],
            round(entry["duration_s"], 3),
        )
        for entry in json.loads(data)
    }
