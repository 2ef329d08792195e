"""Real projects with their real test suites, for test-time scaling tests.

Sdists of small pure-Python projects are downloaded once (`pip download
--no-binary :all: --no-deps`, exact versions) into a cache folder
(`CWM_AGENT_TEST_CACHE`, default ~/.cache/cwm-agent-tests), with pytest's
wheels. Containers have no network, so nothing is installed in them: the
image is the base image plus the unpacked wheels (and, for SWE-bench rows, the
project committed at /testbed), made with COPY only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
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
