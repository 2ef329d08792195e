"""Real projects with their real test suites, for test-time scaling tests.

Sdists of small pure-Python projects are downloaded once (`pip download
--no-binary :all: --no-deps`, exact versions) into a cache folder
(`CWM_AGENT_TEST_CACHE`, default ~/.cache/cwm-agent-tests), with pytest's
wheels. Containers have no network, so nothing is installed in them: the
image is the base image plus the unpacked wheels (and, for SWE-bench rows, the
project committed at /testbed), made with COPY only. `CASES`: for each project,
a line two scripted candidates edit, one of them so that known tests break.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import docker

CACHE = Path(os.environ.get("CWM_AGENT_TEST_CACHE", Path.home() / ".cache" / "cwm-agent-tests"))
WHEELS = (  # pytest and its dependencies, and what marshmallow's tests import
    "pytest==8.3.5",
    "pluggy==1.5.0",
    "iniconfig==2.0.0",
    "packaging==24.2",
    "pytz==2024.1",
    "simplejson==3.19.2",
)
SITE = "/usr/local/lib/python3.11/dist-packages"
PYTEST_SCRIPT = (
    b"#!/usr/bin/python3\nimport sys\nfrom pytest import console_main\n\nsys.exit(console_main())\n"
)
PYTHON_SCRIPT = b'#!/bin/sh\nexec python3 "$@"\n'


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, capture_output=True)


def sdist(spec: str) -> Path:
    """The project's source tree (`name==version`), unpacked from its cached sdist."""
    name, version = spec.split("==")
    folder = CACHE / "sdists"
    unpacked = CACHE / "src" / f"{name.lower()}-{version}"
    if unpacked.is_dir():
        return unpacked
    found = [
        p for p in folder.glob("*.tar.gz") if p.name.lower() == f"{name}-{version}.tar.gz".lower()
    ]
    if not found:
        _pip("download", "--no-binary", ":all:", "--no-deps", spec, "-d", str(folder))
        found = [p for p in folder.glob("*.tar.gz") if p.name.lower().startswith(name.lower())]
    partial = unpacked.with_suffix(".partial")
    with tarfile.open(found[0]) as tar:
        tar.extractall(partial, filter="data")
    (top,) = partial.iterdir()
    top.rename(unpacked)
    partial.rmdir()
    return unpacked


def site_packages() -> Path:
    """The wheels of `WHEELS`, unpacked as pip would install them."""
    target = CACHE / "site-packages"
    if target.is_dir():
        return target
    wheels = CACHE / "wheels"
    _pip(
        "download",
        *("--only-binary", ":all:", "--no-deps", "--python-version", "3.11"),
        *("--platform", "any", "--implementation", "py", "-d", str(wheels), *WHEELS),
    )
    partial = target.with_suffix(".partial")
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(partial)
    partial.rename(target)
    return target


def build_image(
    client: docker.DockerClient, base: str, tag: str, testbed: Path | None, context: Path
) -> str:
    """`base` + pytest (+ `testbed` at /testbed), made without running anything in it."""
    context.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-r", str(site_packages()), str(context / "site")], check=True)
    (context / "bin").mkdir()
    for name, script in (("pytest", PYTEST_SCRIPT), ("python", PYTHON_SCRIPT)):
        (context / "bin" / name).write_bytes(script)
        (context / "bin" / name).chmod(0o755)
    lines = [f"FROM {base}", f"COPY site/ {SITE}/", "COPY bin/ /usr/local/bin/"]
    if testbed is not None:
        subprocess.run(["cp", "-a", str(testbed), str(context / "testbed")], check=True)
        lines.append("COPY testbed/ /testbed/")
    lines.append("ENV PYTHONPATH=/testbed/src")  # src layouts, uninstalled as in tox's absence
    (context / "Dockerfile").write_text("\n".join(lines) + "\n")
    client.images.build(path=str(context), tag=tag, rm=True, network_mode="none")
    return tag


@dataclass(frozen=True)
class Case:
    spec: str
    path: str
    line: str  # the line both candidates edit
    breaks: str  # the breaker's version of it
    method: str
    command: str
    passing: int  # tests passing on the original code
    broken: int  # how many the breaker fails
    where: tuple[str, ...]  # what each of those test ids starts with


CASES = {
    "markupsafe": Case(
        "MarkupSafe==2.1.5",
        "src/markupsafe/_native.py",
        """        .replace("'", "&#39;")\n""",
        """        .replace("'", "&apos;")\n""",
        "tox.ini",
        "mkdir -p /tmp/cwm-agent-tox/env /tmp/cwm-agent-tox/tmp && python -m pytest -v "
        "--tb=short --basetemp=/tmp/cwm-agent-tox/tmp -rA -p no:cacheprovider",
        36,
        10,  # the pure-Python escape on every input with an apostrophe
        (
            "tests/test_escape.py::test_escape[markupsafe._native-",
            "tests/test_markupsafe.py::test_escaping[markupsafe._native]",
        ),
    ),
    "cachetools": Case(
        "cachetools==5.3.3",
        "src/cachetools/keys.py",
        "        return _HashedTuple(args + sum(sorted(kwargs.items()), _kwmark))\n",
        "        return _HashedTuple(args)\n",
        "pytest",
        "python -m pytest -rA -p no:cacheprovider",
        214,
        2,
        (
            "tests/test_keys.py::CacheKeysTest::test_hashkey",
            "tests/test_keys.py::CacheKeysTest::test_typedkey",
        ),
    ),
    "more-itertools": Case(
        "more-itertools==10.2.0",
        "more_itertools/more.py",
        "    deque(zip(iterable, counter), maxlen=0)\n",
        "    deque(zip(counter, iterable), maxlen=0)\n",
        "tox.ini",
        "mkdir -p /tmp/cwm-agent-tox/env /tmp/cwm-agent-tox/tmp && python -m unittest -v",
        773,
        5,  # ilen's test and doctest, and those of functions built on it
        ("tests.", "more_itertools.more."),
    ),
    "exceptiongroup": Case(
        "exceptiongroup==1.2.0",
        "src/exceptiongroup/_catch.py",
        """        raise TypeError("the argument must be a mapping")\n""",
        """        raise TypeError("expected a mapping")\n""",
        "pytest",
        "python -m pytest -rA -p no:cacheprovider",
        85,
        1,
        ("tests/test_catch.py::test_bad_arg",),
    ),
}


def edit_replay(path: str, old: str, new: str, words: str) -> list[str]:
    """A scripted rollout: one edit, the diff, submit (`words` pads its token count)."""
    edit = f"<tool: edit>\n{path}\n<<<<<<< SEARCH\n{old}=======\n{new}>>>>>>> REPLACE\n</tool>"
    diff = "<tool: bash>\ngit diff > /tmp/fix.patch && cat /tmp/fix.patch\n</tool>"
    return [
        f"{words}\n</think>\n\n{edit}",
        f"The diff.\n</think>\n\n{diff}",
        "Submit.\n</think>\n\n<tool: submit>\n/tmp/fix.patch\n</tool>",
        "Done.\n</think>\n\nDone.",
    ]
