"""Test-time scaling at CWM's scale: the test phase, old path against new.

A real project with a heavy import: sympy 1.12 (the pinned sdist from PyPI,
mpmath beside it), committed at /testbed in an image made offline the way
tests/projects.py makes its images (the base image plus files, COPY only), with
a bug put in `isprime` (7 is not prime). K replayed candidates fix it, each
written as one of a few distinct patches; M replayed test-generation rollouts
submit a test that imports sympy, each one of a few distinct sources. The
regression command is `python -m pytest sympy/core/tests/test_basic.py`.

Each case runs twice in one go, each time in its own process: the old path
(the project at `--old-ref`, checked out in a temporary worktree) and the new
(this tree). Both are measured the same way, from outside the code under test:
every container is timed and its CPU read from its cgroup as it is removed;
every command run in a test tree is counted. The test phase is what comes
after the last rollout's container is gone.

Run: .venv/bin/python benchmarks/tts_scale.py [--k 8 16 40] [--m 8 40] [--mix dup distinct]
     [--paths old new]  (the old path at K = M = 40 is hours of CPU on two cores)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OLD_REF = "2e59f8a"  # main before the test phase followed distinct work (issue 22)
SYMPY, MPMATH = "sympy==1.12", "mpmath==1.3.0"
TAG = "cwm-agent-bench/sympy:1.12"
BUGGY = ("    if n < 49:\n        return True\n", "    if n < 49:\n        return n != 7\n")
REGRESSION = "python -m pytest -rA -p no:cacheprovider sympy/core/tests/test_basic.py"
MIXES = {  # how many distinct patches and tests among K candidates and M tests
    "dup": (lambda k: 6, lambda m: 10),  # the "40 candidates in 6 patches, 40 tests in 10"
    "distinct": (lambda k: k, lambda m: m),
}


# -- the project ----------------------------------------------------------------


def sympy_tree(cache: Path) -> Path:
    """sympy's sdist with mpmath beside it and the bug put in, compiled, committed."""
    tree = cache / "sympy-bench-testbed"
    if (tree / ".git").is_dir():
        return tree
    downloads = cache / "downloads"
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(downloads)]
    subprocess.run([*pip, "--no-binary", ":all:", SYMPY], check=True)
    subprocess.run([*pip, "--only-binary", ":all:", MPMATH], check=True)
    partial = Path(tempfile.mkdtemp(dir=cache))
    tar = [
        "tar",
        "xzf",
        str(downloads / "sympy-1.12.tar.gz"),
        "--no-same-owner",
        "-C",
        str(partial),
    ]
    subprocess.run(tar, check=True)
    source = partial / "sympy-1.12"
    with zipfile.ZipFile(downloads / "mpmath-1.3.0-py3-none-any.whl") as wheel:
        wheel.extractall(source)
    primetest = source / "sympy" / "ntheory" / "primetest.py"
    text = primetest.read_text()
    assert BUGGY[0] in text
    primetest.write_text(text.replace(*BUGGY, 1))
    (source / ".gitignore").write_text("__pycache__/\n*.pyc\n")
    # Compiled by the image's Python version, so no container spends its first import on it.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "sympy", "mpmath"], cwd=source)
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b.invalid", "-C", str(source)]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "sympy 1.12, isprime(7) broken"]):
        subprocess.run([*git, *args], check=True)
    source.rename(tree)
    shutil.rmtree(partial)
    return tree


def sympy_image(base: str, cache: Path) -> str:
    import docker

    sys.path.insert(0, str(ROOT))
    from tests.projects import build_image

    client = docker.from_env()
    if client.images.list(name=TAG):
        return TAG
    context = Path(tempfile.mkdtemp(prefix="sympy-image-"))
    try:
        build_image(client, base, TAG, sympy_tree(cache), context)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return TAG


# -- the replays ------------------------------------------------------------------


def candidate_replay(variant: int) -> list[str]:
    fixed = BUGGY[0] if variant == 0 else BUGGY[0].replace("True", f"{variant} == {variant}")
    edit = (
        "<tool: edit>\nsympy/ntheory/primetest.py\n<<<<<<< SEARCH\n"
        f"{BUGGY[1]}=======\n{fixed}>>>>>>> REPLACE\n</tool>"
    )
    diff = "<tool: bash>\ngit diff > /tmp/fix.patch\n</tool>"
    return [
        f"Small primes below 49 must be prime.\n</think>\n\n{edit}",
        f"The diff.\n</think>\n\n{diff}",
        "Submit.\n</think>\n\n<tool: submit>\n/tmp/fix.patch\n</tool>",
        "Done.\n</think>\n\nFixed isprime.",
    ]


def test_replay(variant: int) -> list[str]:
    source = (
        f"from sympy import isprime\n\nchecked = {variant}\n"
        'if isprime(7) and not isprime(49):\n    print("Issue resolved")\n'
        'else:\n    print("Issue reproduced")\n'
    )
    return [
        f"A test.\n</think>\n\n<tool: create>\ntest_issue.py\n{source}</tool>",
        "Submit.\n</think>\n\n<tool: submit>\ntest_issue.py\n</tool>",
        "Done.\n</think>\n\nThe test checks isprime(7).",
    ]


def replays(folder: Path, k: int, m: int, mix: str) -> Path:
    patches, tests = (count(n) for count, n in zip(MIXES[mix], (k, m), strict=True))
    folder.mkdir(parents=True)
    for i in range(k):
        (folder / f"candidate-{i}.json").write_text(json.dumps(candidate_replay(i % patches)))
    for j in range(m):
        (folder / f"testgen-{j}.json").write_text(json.dumps(test_replay(j % tests)))
    return folder


# -- one case, in a process of its own (old or new code on sys.path) ----------------


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """One TTS run, measured from outside: containers, CPU, command runs."""
    from cwm_agent.agent import RolloutConfig
    from cwm_agent.model import ModelSpec, PolicyPool
    from cwm_agent.sandbox import LABEL, Sandbox, docker_client
    from cwm_agent.tts import TTSOptions, TTSRun
    from cwm_agent.workspace import StartSandbox, Workspace

    lock = threading.Lock()
    seen: dict[str, Any] = {"containers": 0, "cpu_s": 0.0, "runs": 0, "rollouts_end": 0.0}
    close, run = Sandbox.close, StartSandbox.run

    def measured_close(self: Sandbox) -> None:
        role = self.config.labels.get(f"{LABEL}.role", "")
        rollout = role.startswith(("candidate-", "testgen-")) and not role.endswith("-tests")
        usage = Path(f"/sys/fs/cgroup/cpuacct/docker/{self.id}/cpuacct.usage")  # cgroup v1
        cpu = int(usage.read_text()) / 1e9 if self.id and usage.exists() else 0.0
        first = self.id is not None  # close may come twice
        close(self)
        with lock:
            if rollout:
                seen["rollouts_end"] = max(seen["rollouts_end"], time.monotonic())
            elif first:
                seen["containers"] += 1
                seen["cpu_s"] += cpu

    def counted_run(self: StartSandbox, *args: Any, **kwargs: Any) -> Any:
        with lock:
            seen["runs"] += 1
        return run(self, *args, **kwargs)

    Sandbox.close = measured_close  # type: ignore[method-assign]
    StartSandbox.run = counted_run  # type: ignore[method-assign]
    options = TTSOptions(
        samples=case["k"], test_samples=case["m"], jobs=case["jobs"], test_cmd=REGRESSION
    )
    report = TTSRun(
        Workspace(image=case["image"]),
        "isprime(7) returns False: 7 is prime.",
        PolicyPool(ModelSpec.parse(f"replay:{case['replays']}")),
        options,
        RolloutConfig(max_turns=6),
        Path(case["out"]),
        docker_client(),
    ).run()
    ended = time.monotonic()
    testing = report.model_dump().get("testing")
    return {
        "selected": report.selected,
        "decision": report.decision,
        "scores": [c.score for c in report.candidates],
        "containers": seen["containers"],
        "cpu_s": round(seen["cpu_s"], 1),
        "test_wall_s": round(ended - seen["rollouts_end"], 1),
        # The old path runs every test by itself: one command, one interpreter each.
        "executions": testing["test_executions"] if testing else seen["runs"],
        "interpreters": testing["interpreter_starts"] if testing else seen["runs"],
    }


def measure(code: Path, case: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run(
        [sys.executable, __file__, "--case", json.dumps(case)],
        env=env,
        cwd=code,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"case {case} failed in {code}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, nargs="+", default=[8, 16, 40])
    parser.add_argument("--m", type=int, nargs="+", default=[8, 40])
    parser.add_argument("--mix", nargs="+", choices=list(MIXES), default=list(MIXES))
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--old-ref", default=OLD_REF)
    parser.add_argument("--paths", nargs="+", choices=("old", "new"), default=["old", "new"])
    parser.add_argument("--image", default="cwm-base:bookworm")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one measured run, as JSON
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    cache = Path(os.environ.get("CWM_AGENT_TEST_CACHE", Path.home() / ".cache" / "cwm-agent-tests"))
    image = sympy_image(args.image, cache)
    root = Path(tempfile.mkdtemp(prefix="tts-scale-"))
    old = root / "old"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old), args.old_ref]
    )
    print(f"# {platform.machine()}, {os.cpu_count()} cores, jobs={args.jobs}, old = {args.old_ref}")
    print(
        "| K | M | mix | distinct patches/tests | path | containers | test executions "
        "| interpreter starts | test phase wall | test phase CPU | selected |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    try:
        for k in args.k:
            for m in args.m:
                for mix in args.mix:
                    patches, tests = (count(n) for count, n in zip(MIXES[mix], (k, m), strict=True))
                    folder = replays(root / f"replays-{k}-{m}-{mix}", k, m, mix)
                    results = {}
                    for path, code in (("old", old), ("new", ROOT)):
                        if path not in args.paths:
                            continue
                        case = {
                            "k": k,
                            "m": m,
                            "jobs": args.jobs,
                            "image": image,
                            "replays": str(folder),
                            "out": str(root / f"run-{k}-{m}-{mix}-{path}"),
                        }
                        results[path] = r = measure(code, case)
                        print(
                            f"| {k} | {m} | {mix} | {patches}/{tests} | {path} | {r['containers']} "
                            f"| {r['executions']} | {r['interpreters']} | {r['test_wall_s']} s "
                            f"| {r['cpu_s']} s | {r['selected']} |",
                            flush=True,
                        )
                    if len(results) < 2:
                        continue
                    same = results["old"]["selected"] == results["new"]["selected"]
                    ratio = results["old"]["cpu_s"] / max(results["new"]["cpu_s"], 0.1)
                    print(f"|  |  |  |  | new vs old | CPU ÷{ratio:.1f} | same selection: {same} |")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)])
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
