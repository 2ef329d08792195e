"""`cwm-agent debug` driven through its stdin as a user types, with real sandboxed traces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cwm_agent.trace import tracer
from cwm_agent.trace.actual import ActualTrace
from cwm_agent.trace.format import Event, Frame, frame_pieces
from cwm_agent.trace.models import replay_script

pytestmark = pytest.mark.docker

SOURCE = """def double(x):
    y = x * 2
    return y


def f(a):
    b = double(a)
    c = b + 1
    return c
"""


def real_frames() -> list[Frame]:
    job = {"source": SOURCE, "function": "f", "args": "5"}
    return ActualTrace.from_json(tracer.run_job(job)).frames


def debug(tmp_path: Path, frames: list[Frame], keys: str, image: str) -> str:
    program = tmp_path / "prog.py"
    program.write_text(SOURCE)
    replay = tmp_path / "replay.json"
    replay.write_text(json.dumps(replay_script([frame_pieces(frame) for frame in frames])))
    done = subprocess.run(
        [
            *(sys.executable, "-m", "cwm_agent.cli", "debug", str(program), "--function", "f"),
            *("--args", "5", "--model", f"replay:{replay}", "--image", image),
        ],
        input=keys,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def test_step_into_locals_back_set_and_check(tmp_path: Path, base_image: str) -> None:
    keys = "s\ns\ns\np\np y\nb\nb\ns\nset a 7\np a\ncheck\nq\n"
    out = debug(tmp_path, real_frames(), keys, base_image)
    assert "def f(a):  # << START_OF_TRACE" in out
    # Reached, shown again after one step back, reached again after a second back and a step.
    assert out.count("-> [call]   1 def double(x):") == 3
    assert "-> [line]   2 y = x * 2" in out
    assert "x = 5" in out and "no local 'y'" in out
    assert "a = 7" in out  # the edited local as `locals` shows it
    assert "first difference at step 2" in out  # the edited call frame is not what ran
    assert "locals edited at step 2" in out


def test_next_steps_over_a_call_and_check_skips_its_body(tmp_path: Path, base_image: str) -> None:
    frames = real_frames()
    # What the model is asked for when stepping over `double`: its call, then its return.
    calls = [i for i, frame in enumerate(frames) if frame.event == Event.CALL]
    ret = next(i for i, frame in enumerate(frames) if frame.event == Event.RETURN)
    over = [*frames[: calls[1] + 1], *frames[ret:]]
    out = debug(tmp_path, over, "s\nn\nn\ncheck\nn\nn\nn\nq\n", base_image)
    assert "-> [line]   8 c = b + 1" in out and "b=10" in out
    assert "prediction and reality agree so far" in out
    assert "-> [return]   9 return c" in out and "-> 11" in out
    assert "end of trace" in out


def test_a_wrong_prediction_is_found_by_check(tmp_path: Path, base_image: str) -> None:
    frames = real_frames()
    frames[2] = Frame(Event.CALL, frames[2].line, {"x": "6"})
    out = debug(tmp_path, frames, "s\ns\ns\ncheck\nset\nhelp\nfoo\n", base_image)
    assert "first difference at step 2" in out
    assert "usage: set NAME VALUE" in out and "unknown command 'foo'" in out
    assert "next line, a call's return predicted without stepping in" in out


def test_out_at_a_call_leaves_the_callee(tmp_path: Path, base_image: str) -> None:
    frames = real_frames()
    calls = [i for i, frame in enumerate(frames) if frame.event == Event.CALL]
    ret = next(i for i, frame in enumerate(frames) if frame.event == Event.RETURN)
    over = [*frames[: calls[1] + 1], *frames[ret:]]
    out = debug(tmp_path, over, "s\ns\no\ncheck\no\n", base_image)
    after_out = out.split("-> [call]   1 def double(x):", 1)[1]
    assert after_out.index("-> [line]   8 c = b + 1") < after_out.index("prediction and reality")
    assert "prediction and reality agree so far" in out
    assert out.rstrip().endswith(">>") and "end of trace" in out  # out of f: the trace ends
