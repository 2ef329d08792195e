"""Helpers shared by several test modules: git repositories, scripted replies, the
command lines of `fix` and `swebench run`, the SWE-style instances those runs use,
and the tiny model's completions server with recording fronts before it.

Fixtures are imported by the modules that use them (pytest finds them by name).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from cwm_agent.model.hf import TransformersPolicy
from cwm_agent.model.server import CompletionServer, serve
from cwm_agent.protocol import prompts
from cwm_agent.protocol.chat import EOM, Message
from cwm_agent.sandbox import LABEL
from tests.conftest import started_containers, test_image

EXAMPLES = Path(__file__).parent.parent / "examples"
CALC_EXAMPLE = EXAMPLES / "calc"  # `fix`: median() is wrong for even counts
CLAMP_EXAMPLE = EXAMPLES / "clamp"  # test-time scaling: clamp() ignores `high`
SAMPLE_ISSUE = """`parse({})` raises KeyError instead of returning an empty result.

Steps to reproduce:

    >>> from pkg import parse
    >>> parse({})
    KeyError: 'items'

A README that contains <|eot_id|> must not matter.
"""


# -- git and scripted replies ---------------------------------------------

GIT = ["git", "-c", "user.name=dev", "-c", "user.email=dev@example.invalid"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        [*GIT, "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def committed_copy(source: Path, repo: Path) -> Path:
    """`source` copied to `repo` as a git repository with one commit."""
    shutil.copytree(source, repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", repo.name)
    return repo


def call(tool: str, argument: str, thought: str = "Next step.") -> str:
    return f"{thought}\n</think>\n\n<tool: {tool}>\n{argument}\n</tool>"


def fix_args(repo: Path, base_image: str, output: Path, model: str) -> list[str]:
    """`fix` on the calc example's issue."""
    return [
        "fix",
        "--repo",
        str(repo),
        "--issue-file",
        str(CALC_EXAMPLE / "issue.md"),
        "--model",
        model,
        "--image",
        base_image,
        "--output",
        str(output),
    ]


def fix_containers(client: docker.DockerClient) -> list[str]:
    return started_containers(client, f"{LABEL}.job=fix")


def scaled_fix_args(repo: Path, image: str, output: Path, replays: Path, *extra: str) -> list[str]:
    """`fix` with test-time scaling on the clamp example's issue, replies from `replays`."""
    return [
        "fix",
        *("--repo", str(repo), "--issue-file", str(CLAMP_EXAMPLE / "issue.md")),
        *("--model", f"replay:{replays}", "--image", image, "--output", str(output)),
        *("--max-turns", "8", *extra),
    ]


# -- the SWE-style instances of `swebench run` (test_swebench_run.py says what they are) --

IMAGE = test_image("swebench-calc")
CALC = """def mean(values):
    return sum(values) / len(values)


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return ordered[middle]


def clamp(x, low, high):
    return max(low, x)


def span(values):
    return max(values) - min(values) + 1
"""
TESTS = """import unittest

from calc import mean, median


class TestCalc(unittest.TestCase):
    def test_mean(self):
        self.assertEqual(mean([1, 2, 3]), 2)

    def test_median_odd(self):
        self.assertEqual(median([3, 1, 2]), 2)
"""
FIXES = {  # instance -> (buggy line, fixed line, new test)
    "calc__calc-1": (
        "    return ordered[middle]\n",
        "    return (ordered[middle - 1] + ordered[middle]) / 2\n",
        "    def test_median_even(self):\n        self.assertEqual(median([4, 1, 3, 2]), 2.5)\n",
    ),
    "calc__calc-2": (
        "    return max(low, x)\n",
        "    return min(high, max(low, x))\n",
        "    def test_clamp_high(self):\n        from calc import clamp\n"
        "        self.assertEqual(clamp(9, 0, 5), 5)\n",
    ),
    "calc__calc-3": (
        "    return max(values) - min(values) + 1\n",
        "    return max(values) - min(values)\n",
        "    def test_span(self):\n        from calc import span\n"
        "        self.assertEqual(span([2, 7]), 5)\n",
    ),
}
WRONG = "    return max(low, x) if x < high else high + 1\n"  # clamp still wrong
ISSUES = {
    "calc__calc-1": "median() is wrong for an even number of values",
    "calc__calc-2": "clamp() ignores its upper bound",
    "calc__calc-3": "span() is off by one",
}


def unittest_name(test_line: str) -> str:
    name = test_line.split("def ")[1].split("(")[0]
    return f"{name} (test_calc.TestCalc.{name})"


P2P = [unittest_name("def test_mean("), unittest_name("def test_median_odd(")]


def diff(repo: Path, path: str, old: str, new: str) -> str:
    """The patch that replaces `old` by `new` in `path` (last occurrence), from git."""
    file = repo / path
    original = file.read_text()
    head, _, tail = original.rpartition(old)
    file.write_text(head + new + tail)
    patch = git(repo, "diff")
    file.write_text(original)
    return patch


@pytest.fixture(scope="module")
def calc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The repository, its rows (with gold patches) and the future commit's hash."""
    repo = tmp_path_factory.mktemp("calc") / "testbed"
    repo.mkdir()
    (repo / "calc.py").write_text(CALC)
    (repo / "test_calc.py").write_text(TESTS)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "calc")
    rows, gold = [], {}
    for instance_id, (old, new, test) in FIXES.items():
        gold[instance_id] = diff(repo, "calc.py", old, new)
        test_patch = diff(repo, "test_calc.py", TESTS, TESTS + "\n" + test)
        rows.append(
            {
                "instance_id": instance_id,
                "repo": "calc/calc",
                "problem_statement": ISSUES[instance_id] + "\n",
                "image": IMAGE,
                "test_cmd": "python3 -m unittest -v test_calc",
                "log_parser": "parse_log_django",
                "patch": gold[instance_id],
                "test_patch": test_patch,
                "FAIL_TO_PASS": json.dumps([unittest_name(test)]),
                "PASS_TO_PASS": json.dumps(P2P),
                "difficulty": "<15 min fix",
            }
        )
    git(repo, "checkout", "-qb", "future")
    (repo / "calc.py").write_text(CALC.replace(*FIXES["calc__calc-1"][:2]))
    git(repo, "commit", "-qam", "future fix")
    future = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "tag", "v-future")
    git(repo, "checkout", "-q", "main")
    git(repo, "remote", "add", "origin", "https://example.invalid/calc.git")
    return {"repo": repo, "rows": rows, "gold": gold, "future": future}


@pytest.fixture(scope="module")
def calc_image(
    client: docker.DockerClient, base_image: str, calc: dict[str, object]
) -> Iterator[str]:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(calc["repo"], arcname="testbed", filter=_as_root)  # type: ignore[arg-type]
    container = client.containers.create(base_image, command=["true"])
    try:
        container.put_archive("/", buffer.getvalue())
        container.commit(*IMAGE.split(":"))
    finally:
        container.remove(force=True)
    yield IMAGE
    client.images.remove(IMAGE, force=True)


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


@pytest.fixture
def dataset(tmp_path: Path, calc: dict[str, object], calc_image: str) -> Path:
    rows = [*calc["rows"]]  # type: ignore[misc]
    rows.append({**rows[0], "instance_id": "calc__calc-4", "image": "cwm-agent-test/absent:none"})
    path = tmp_path / "dataset.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_patch(patch: str) -> str:
    return call("bash", f"cat > /tmp/fix.patch <<'EOF_PATCH'\n{patch}EOF_PATCH")


@pytest.fixture
def replays(tmp_path: Path, calc: dict[str, object]) -> Path:
    """Gold (after looking for the future commit), wrong, and nothing submitted."""
    gold: dict[str, str] = calc["gold"]  # type: ignore[assignment]
    repo: Path = calc["repo"]  # type: ignore[assignment]
    wrong = diff(repo, "calc.py", FIXES["calc__calc-2"][0], WRONG)
    submit = [call("submit", "/tmp/fix.patch"), "Submitted.\n</think>\n\nDone."]
    folder = tmp_path / "replays"
    folder.mkdir()
    scripts = {
        "calc__calc-1": [
            call("bash", f"git log --all --format=%s; git cat-file -t {calc['future']}"),
            write_patch(gold["calc__calc-1"]),
            *submit,
        ],
        "calc__calc-2": [call("bash", "sleep 2"), write_patch(wrong), *submit],
        "calc__calc-3": [call("bash", "true")] * 6,
        "calc__calc-4": [],
    }
    for instance_id, replies in scripts.items():
        (folder / f"{instance_id}.json").write_text(json.dumps(replies))
    return folder


def run_args(dataset: Path, replays: Path, output: Path, *extra: str) -> list[str]:
    return [
        "swebench",
        "run",
        "--dataset",
        str(dataset),
        "--model",
        f"replay:{replays}",
        "--output",
        str(output),
        "--max-turns",
        "5",
        "--quiet",
        *extra,
    ]


def batch_containers(client: docker.DockerClient, output: Path) -> list[str]:
    label = f"{LABEL}.swebench={output.resolve().name}"
    return [c.id for c in client.containers.list(all=True, filters={"label": label})]


def predictions(output: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]


# -- the tiny model's completions server, and recording fronts before it -------

FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05}  # retries without real waiting


def sample_conversations() -> list[list[Message]]:
    """Three realistic conversations of different lengths (the order check uses that)."""
    system = Message.system(prompts.system_prompt(prompts.environment_prompt(120, 131072, 128)))
    issue = Message.user(prompts.issue_prompt("`add(2, 2)` returns 5.", "/testbed", len, 10**9))
    reply = Message.assistant(
        "The bug must be in add.\n</think>\nLet me look.\n<tool: bash>\ncat app.py\n</tool>"
    )
    result = Message.tool(
        "bash", prompts.tool_result("def add(a, b):\n    return a + b + 1\n", 126, 130000)
    )
    return [
        [system, issue],
        [system, issue, reply, result],
        [
            Message.user("Hello"),
            Message.assistant("Hi.\n</think>\nHi!", stop=EOM),
            Message.user("Bye"),
        ],
    ]


@pytest.fixture(scope="module")
def local(tiny_cwm_dir: Path) -> TransformersPolicy:
    return TransformersPolicy(str(tiny_cwm_dir), offline=True)


@pytest.fixture(scope="module")
def server(local: TransformersPolicy) -> Iterator[CompletionServer]:
    server, thread = serve(local)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


class _Front(ThreadingHTTPServer):
    """Answers the first POSTs with the given failure statuses, `canned` paths with fixed
    JSON, and passes everything else to `upstream`; records each POST body."""

    daemon_threads = True

    def __init__(
        self,
        upstream: str | None,
        failures: tuple[int, ...] = (),
        delay_s: float = 0.0,
        canned: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _FrontHandler)
        self.upstream = upstream
        self.failures = list(failures)
        self.delay_s = delay_s
        self.canned = canned or {}
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _FrontHandler(BaseHTTPRequestHandler):
    server: _Front

    def do_GET(self) -> None:
        self._answer(None)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.posts.append((self.path, body))
            failure = self.server.failures.pop(0) if self.server.failures else None
        time.sleep(self.server.delay_s)
        if failure is not None:
            self._send(failure, {"error": {"message": f"injected\n{failure}"}})
        else:
            self._answer(body)

    def _answer(self, body: dict[str, Any] | None) -> None:
        if self.path in self.server.canned:
            self._send(200, self.server.canned[self.path])
        elif self.server.upstream is None:
            self._send(404, {"error": {"message": "no such route"}})
        else:
            method = "GET" if body is None else "POST"
            reply = requests.request(
                method, self.server.upstream + self.path, json=body, timeout=60
            )
            self._send(reply.status_code, reply.json())

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the client timed out: that is the test
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def front_factory() -> Iterator[Any]:
    started: list[tuple[_Front, threading.Thread]] = []

    def start(upstream: str | None, **kwargs: Any) -> _Front:
        front = _Front(upstream, **kwargs)
        thread = threading.Thread(target=front.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        started.append((front, thread))
        return front

    yield start
    for front, thread in started:
        front.shutdown()
        front.server_close()
        thread.join(timeout=10)
