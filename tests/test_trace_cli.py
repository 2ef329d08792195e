"""`cwm-agent trace` and `cwm-agent eval cruxeval` as a user runs them (real sandbox)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import docker
import pytest
from conftest import run_cli

from cwm_agent.trace.actual import ActualTrace
from cwm_agent.trace.cruxeval import read_jsonl
from cwm_agent.trace.format import Frame, frame_pieces
from cwm_agent.trace.models import replay_script

pytestmark = pytest.mark.docker

ROWS = [
    {
        "id": "sample_0",
        "code": (
            "def f(nums):\n    output = []\n    for n in nums:\n"
            "        output.append((nums.count(n), n))\n    output.sort(reverse=True)\n"
            "    return output"
        ),
        "input": "[1, 1, 3]",
        "output": "[(2, 1), (2, 1), (1, 3)]",
    },
    {
        "id": "sample_1",
        "code": (
            "def f(text, value):\n    text_list = list(text)\n    text_list.append(value)\n"
            "    return ''.join(text_list)"
        ),
        "input": "'bcksrut', 'q'",
        "output": "'bcksrutq'",
    },
    {
        "id": "sample_2",
        "code": "def f(d):\n    return sorted(d.items(), key=lambda kv: kv[1])",
        "input": "{'a': 2, 'b': 1}",
        "output": "[('b', 1), ('a', 2)]",
    },
]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "cruxeval.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "prog.py"
    path.write_text(ROWS[0]["code"] + "\n")
    return path


def replay_from(trace: dict, path: Path) -> Path:
    frames = [Frame.from_json(frame) for frame in trace["frames"]]
    path.write_text(json.dumps(replay_script([frame_pieces(frame) for frame in frames])))
    return path


def no_trace_containers(client: docker.DockerClient) -> bool:
    """No tracer container outlived the command that made it (a run of another test
    session on the same daemon may still be going: its process is alive)."""
    found = client.containers.list(all=True, filters={"label": "cwm-agent.purpose=trace"})
    return all(process_alive(int(c.labels.get("cwm-agent.pid", "0"))) for c in found)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def test_trace_actual_then_compare_a_perfect_replay(
    program: Path, tmp_path: Path, client: docker.DockerClient, base_image: str
) -> None:
    common = [str(program), "--function", "f", "--args", "[1, 1, 3]", "--image", base_image]
    actual = run_cli("trace", *common, "--actual", "--json")
    assert actual.returncode == 0, actual.stderr
    result = json.loads(actual.stdout)
    assert "predicted" not in result and result["actual"]["output"] == ROWS[0]["output"]
    replay = replay_from(result["actual"], tmp_path / "replay.json")
    predicted = run_cli("trace", *common, "--model", f"replay:{replay}")
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.startswith("predicted") and "(replay:" in predicted.stdout
    assert "-> [(2, 1), (2, 1), (1, 3)]" in predicted.stdout
    shown = run_cli("trace", *common, "--compare", "--model", f"replay:{replay}")
    assert shown.returncode == 0, shown.stderr
    assert "predicted vs actual" in shown.stdout and "first divergence" not in shown.stdout
    assert shown.stdout.count("100.0%") == 4
    compared = run_cli("trace", *common, "--compare", "--model", f"replay:{replay}", "--json")
    scores = json.loads(compared.stdout)["scores"]
    assert scores["valid"] and scores["output_match"] and scores["state"] == 1.0
    assert no_trace_containers(client)


def test_trace_with_the_tiny_model_reports_its_malformed_frame(
    program: Path, tiny_cwm_dir: Path, base_image: str
) -> None:
    done = run_cli(
        *("trace", str(program), "--function", "f", "--args", "[2]", "--image", base_image),
        *("--compare", "--model", str(tiny_cwm_dir), "--offline", "--max-frame-tokens", "8"),
    )
    assert done.returncode == 0, done.stderr
    assert "malformed frame: no <|frame_sep|> within 8 tokens" in done.stdout
    assert "first divergence" in done.stdout and "Traceback" not in done.stderr


def test_eval_cruxeval_tiny_model_then_resume_then_perfect_replay(
    data: Path, tmp_path: Path, tiny_cwm_dir: Path, base_image: str
) -> None:
    out = tmp_path / "run"
    tiny = ["--model", str(tiny_cwm_dir), "--offline", "--max-frame-tokens", "8"]
    args = ["eval", "cruxeval", "--data", str(data), "--output", str(out), "--image", base_image]
    first = run_cli(*args, *tiny, "--limit", "3")
    assert first.returncode == 0, first.stderr
    assert "malformed traces: 3" in first.stdout and "Traceback" not in first.stderr
    assert "99.6%" in first.stdout  # the paper's figure beside ours
    lines = list(read_jsonl(out / "predictions.jsonl"))
    assert [line["id"] for line in lines] == ["sample_0", "sample_1", "sample_2"]
    assert all(line["prediction"]["error"] is not None for line in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 3 and summary["figures"]["valid"] == 0.0

    again = run_cli(*args, *tiny, "--limit", "3")  # resumed: nothing left to do
    assert again.returncode == 0, again.stderr
    assert len(list(read_jsonl(out / "predictions.jsonl"))) == 3

    other = run_cli(*args, "--model", f"replay:{data}")
    assert other.returncode == 1 and "holds a run of" in other.stderr
    assert other.stderr.startswith("error: ") and len(other.stderr.strip().splitlines()) == 1

    replays = tmp_path / "replays"
    replays.mkdir()
    for line in read_jsonl(out / "actual.jsonl"):
        assert ActualTrace.from_json(line["trace"]).complete
        replay_from(line["trace"], replays / f"{line['id']}.json")
    perfect = run_cli(
        *args[:-4],
        "--output",
        str(tmp_path / "perfect"),
        "--image",
        base_image,
        "--model",
        f"replay:{replays}",
    )
    assert perfect.returncode == 0, perfect.stderr
    figures = json.loads((tmp_path / "perfect" / "summary.json").read_text())["figures"]
    assert figures == {"valid": 100.0, "state": 100.0, "action": 100.0, "output": 100.0}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--function", "g"], "no top-level function 'g'"),
        (["--function", "f", "--args", "[1,"], "cannot trace f([1,): SyntaxError"),
        (["--function", "f", "--args", "1, 2"], "cannot trace f(1, 2): TypeError"),
    ],
)
def test_bad_input_is_one_line(
    program: Path, base_image: str, extra: list[str], message: str
) -> None:
    done = run_cli("trace", str(program), *extra, "--actual", "--image", base_image)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    done = run_cli("trace", str(tmp_path / "nope.py"), "--function", "f", "--actual")
    assert done.returncode == 1 and done.stderr.startswith("error: cannot read")
