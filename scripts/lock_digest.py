"""Print the SHA-256 of pyproject.toml's dependency tables, which the lock records:
tests/test_lock.py compares the two to tell that the lock was made from them."""

import hashlib
import json
import sys
import tomllib
from pathlib import Path


def dependency_digest(pyproject: Path) -> str:
    project = tomllib.loads(pyproject.read_text())["project"]
    tables = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
    }
    return hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent.parent
    print(dependency_digest(root / "pyproject.toml"))
