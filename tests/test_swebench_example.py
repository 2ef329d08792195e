"""examples/swebench works as the README shows it: image, run, eval, report, view.

The README's commands are taken from its code block and run as written, with
two changes a shared Docker daemon needs: the image gets this session's name
(`--image-template`) and the run folder is the test's own.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import run_cli, test_image

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_IMAGE = test_image("swebench-example")

pytestmark = pytest.mark.docker


def readme_commands() -> list[list[str]]:
    """The README's block that builds the example's image, one command per line."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "build-image" in b)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line]


@pytest.fixture
def example_image(client: docker.DockerClient, base_image: str) -> Iterator[str]:
    yield EXAMPLE_IMAGE
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.remove(EXAMPLE_IMAGE, force=True)


def test_the_example_batch_runs_grades_reports_and_views(
    example_image: str, base_image: str, tmp_path: Path
) -> None:
    build, *commands = readme_commands()
    assert build == ["examples/swebench/build-image.sh"]
    run_folder = commands[0][commands[0].index("--output") + 1]
    assert [c[:3] for c in commands] == [
        ["cwm-agent", "swebench", "run"],
        ["cwm-agent", "swebench", "eval"],
        ["cwm-agent", "swebench", "report"],
        ["cwm-agent", "view", run_folder],
    ]
    subprocess.run([ROOT / build[0], example_image, base_image], check=True, cwd=ROOT)
    output = str(tmp_path / "example")
    done = []
    for command in commands:
        args = [arg.replace(run_folder, output) for arg in command[1:]]
        if args[:2] in (["swebench", "run"], ["swebench", "eval"]):
            args += ["--image-template", example_image]
        done.append(run_cli(*args, cwd=ROOT, timeout=120))
        assert done[-1].returncode == 0, done[-1].stderr
    assert "2 instance(s) finished, 0 error(s)" in done[0].stdout
    assert "resolved 1/2" in done[1].stdout
    report = json.loads((tmp_path / "example" / "report.json").read_text())
    verdicts = {name: i["status"] for name, i in report["instances"].items()}
    assert verdicts == {"calc__calc-1": "resolved", "calc__calc-2": "unresolved"}
    assert "1/2 (50.0%) of all instances run" in done[2].stdout
    assert (tmp_path / "example" / "index.html").is_file()
