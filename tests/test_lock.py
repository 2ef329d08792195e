"""The lock (constraints.txt) must be made from pyproject.toml as it is now.

setup.sh, and so CI, installs from the lock; a dependency changed in pyproject.toml
without `scripts/update-lock.sh` would make CI test something users don't get.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;]+)\s*(?:;\s*(.+))?$")


def load_digest_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_digest", ROOT / "scripts/lock_digest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pins() -> dict[str, str]:
    """Each package's pin for this interpreter (markers evaluated here)."""
    found: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if match := PIN.match(line.strip()):
            name, version, marker = match.groups()
            if marker is None or Requirement(f"x; {marker}").marker.evaluate():
                assert canonicalize_name(name) not in found, f"{name} pinned twice"
                found[canonicalize_name(name)] = version
    return found


def test_the_lock_records_the_dependencies_it_was_made_from() -> None:
    header = (ROOT / "constraints.txt").read_text()
    recorded = re.search(r"^# pyproject-dependencies-sha256: (\w+)$", header, re.M)
    assert recorded, "constraints.txt has no pyproject digest: run scripts/update-lock.sh"
    current = load_digest_script().dependency_digest(ROOT / "pyproject.toml")
    assert recorded.group(1) == current, (
        "pyproject.toml's dependencies changed since the lock was made: run scripts/update-lock.sh"
    )


def test_every_declared_dependency_has_one_pin_that_satisfies_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    locked = pins()
    for line in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is not in the lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"the lock's {requirement.name}=={locked[name]} is outside {requirement.specifier}"
        )


def test_torch_is_locked_at_the_version_setup_installs() -> None:
    setup = (ROOT / "scripts/setup.sh").read_text()
    default = re.search(r"TORCH_SPEC:=torch==([\d.]+)", setup)
    assert default and pins()["torch"] == default.group(1)
