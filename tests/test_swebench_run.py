"""`cwm-agent swebench run | eval | report` end to end on SWE-style instances built here.

One tiny repository with three bugs is baked into one local image at /testbed
(plus a future fix commit on another branch and a tag, which hygiene must
hide). Three instances share it; replay policies submit the gold patch, a
wrong patch and nothing. A fourth instance names an image that does not exist.
Tests run with `python3 -m unittest -v`, graded by the official django parser
(the unittest output format).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path

import docker
import pytest
import yaml

from cwm_agent.sandbox import LABEL
from tests import helpers
from tests.conftest import default_signals, run_cli, start_cli
from tests.helpers import (
    FIXES,
    ISSUES,
    P2P,
    WRONG,
    batch_containers,
    call,
    diff,
    git,
    predictions,
    run_args,
    unittest_name,
    write_patch,
)

# The SWE-style fixture's repository, image, dataset and replay policies.
calc, calc_image = helpers.calc, helpers.calc_image
dataset, replays = helpers.dataset, helpers.replays

pytestmark = pytest.mark.docker


def test_run_eval_report(
    dataset: Path, replays: Path, tmp_path: Path, client: docker.DockerClient
) -> None:
    output = tmp_path / "run-all"
    done = run_cli(*run_args(dataset, replays, output, "--workers", "2"))
    assert done.returncode == 1, done.stderr + done.stdout  # issue 13.13: scripts can tell
    assert "3 instance(s) finished, 1 error(s)" in done.stdout
    assert done.stderr.endswith("error: 1 instance(s) ended in an error\n"), done.stderr
    assert batch_containers(client, output) == []

    lines = {p["instance_id"]: p for p in predictions(output)}
    assert sorted(lines) == ["calc__calc-1", "calc__calc-2", "calc__calc-3"]
    assert (
        lines["calc__calc-1"]["model_patch"]
        == json.loads(dataset.read_text().splitlines()[0])["patch"]
    )
    assert lines["calc__calc-3"]["model_patch"] == ""
    assert {p["model_name_or_path"] for p in lines.values()} == {f"replay:{replays}"}

    results = {
        path.parent.name: json.loads(path.read_text())
        for path in output.glob("trajectories/*/result.json")
    }
    missing = results["calc__calc-4"]
    assert missing["status"] == "error" and missing["error"] == "image_missing"
    assert "swebench run: --image-template" in missing["reason"]  # the flag this command has
    assert results["calc__calc-3"]["rollout_status"] == "max_turns"
    assert len({r["start"] for r in results.values() if r["start"]}) == 1  # the image's HEAD

    # Hygiene: the future commit, branch and tag are gone before the agent starts.
    trajectory = json.loads((output / "trajectories/calc__calc-1/trajectory.json").read_text())
    seen = trajectory["messages"][3]["tool_result"]["output"]
    assert "calc" in seen and "future fix" not in seen and "fatal" in seen
    assert trajectory["messages"][1]["content"].count(ISSUES["calc__calc-1"] + "\n</issue") == 1

    record = json.loads((output / "run.json").read_text())
    assert record["versions"]["swebench"] == "4.1.0"
    assert record["sessions"][0]["finished"] == 3 and record["sessions"][0]["errors"] == 1

    entry = tmp_path / "entry"
    bundle = ("swebench", "bundle", str(output), "--out", str(entry), "--name", "CWM + cwm-agent")
    ungraded = run_cli(*bundle)
    assert ungraded.returncode == 1 and not entry.exists()
    assert ungraded.stderr == f"error: {output} is not graded: run `cwm-agent swebench eval " + (
        f"--predictions {output / 'predictions.jsonl'}` first, or give --eval the report.json "
        "of its eval\n"
    )

    graded = run_cli(
        "swebench", "eval", "--predictions", str(output / "predictions.jsonl"),
        "--dataset", str(dataset), "--workers", "2", "--quiet",
    )  # fmt: skip
    assert graded.returncode == 0, graded.stderr + graded.stdout
    assert "resolved 1/3 (33.3%)" in graded.stdout
    report = json.loads((output / "report.json").read_text())
    eval_label = f"{LABEL}.swebench={report['run_id']}"
    assert client.containers.list(all=True, filters={"label": eval_label}) == []
    assert report["counts"] == {"resolved": 1, "unresolved": 1, "error": 0, "empty_patch": 1}
    status = {i: r["status"] for i, r in report["instances"].items()}
    assert status == {
        "calc__calc-1": "resolved",
        "calc__calc-2": "unresolved",
        "calc__calc-3": "empty_patch",
    }
    wrong = report["instances"]["calc__calc-2"]["tests_status"]
    assert wrong["FAIL_TO_PASS"] == {
        "success": [],
        "failure": [unittest_name("def test_clamp_high(")],
    }
    assert wrong["PASS_TO_PASS"] == {"success": P2P, "failure": []}
    assert "Ran 3 tests" in (output / "eval/calc__calc-1/test_output.txt").read_text()

    shown = run_cli("swebench", "report", str(output))
    assert shown.returncode == 0, shown.stderr
    assert "resolved 1/3 (33.3%) of the graded predictions, 1/4 (25.0%) of all instances run" in (
        shown.stdout
    )
    assert "4 instance(s): 2 submitted a patch, 1 submitted none, 1 error(s)" in shown.stdout
    data = json.loads(run_cli("swebench", "report", str(output), "--json").stdout)
    assert [data[k] for k in ("resolved", "graded", "resolved_of_all", "instances")] == [1, 3, 1, 4]
    assert "image_missing" in shown.stdout and "calc/calc" in shown.stdout

    # Token and time accounting: each result's from its trajectory, the report's sums.
    for instance_id in lines:
        usage = results[instance_id]["usage"]
        folder = output / "trajectories" / instance_id
        rollout = json.loads((folder / "trajectory.json").read_text())
        assert usage["prompt_tokens"] == rollout["prompt_tokens"] > 0
        assert usage["completion_tokens"] == rollout["completion_tokens"] > 0
        assert usage["model_s"] == round(rollout["generation_s"], 3)
        assert usage["sandbox_s"] == round(rollout["tools_s"], 3)
    assert results["calc__calc-2"]["usage"]["sandbox_s"] >= 2  # it ran `sleep 2`
    assert results["calc__calc-4"]["usage"]["prompt_tokens"] == 0  # no rollout
    for key in ("prompt_tokens", "completion_tokens", "model_s", "sandbox_s"):
        values = [r["usage"][key] for r in results.values()]
        assert data["usage"][key] == pytest.approx(sum(values))
        ran = sorted(results[i]["usage"][key] for i in lines)
        assert (data[key]["min"], data[key]["max"]) == (ran[0], ran[-1])
    assert data["usage_by_part"] is None
    assert "prompt tokens" in shown.stdout and "sandbox time (s)" in shown.stdout

    # The leaderboard entry: the experiments repository's layout, from the run and its eval.
    bundled = run_cli(*bundle, "--eval", str(output / "report.json"))
    assert bundled.returncode == 0, bundled.stderr + bundled.stdout
    assert (entry / "all_preds.jsonl").read_text() == (output / "predictions.jsonl").read_text()
    assert sorted(p.name for p in (entry / "logs").iterdir()) == ["calc__calc-1", "calc__calc-2"]
    for instance_id in ("calc__calc-1", "calc__calc-2"):  # calc-3's patch is empty: no logs
        logs = entry / "logs" / instance_id
        assert (logs / "patch.diff").read_text() == lines[instance_id]["model_patch"]
        assert (logs / "test_output.txt").read_text() == (
            output / "eval" / instance_id / "test_output.txt"
        ).read_text()
        verdict = json.loads((logs / "report.json").read_text())[instance_id]
        graded_as = report["instances"][instance_id]
        assert verdict == {
            "patch_is_None": False,
            "patch_exists": True,
            "patch_successfully_applied": True,
            "resolved": graded_as["status"] == "resolved",
            "tests_status": graded_as["tests_status"],
        }
    assert sorted(p.name for p in (entry / "trajs").iterdir()) == [
        f"{i}.json" for i in sorted(lines)
    ]  # calc-4 never started a rollout
    assert (entry / "trajs" / "calc__calc-1.json").read_bytes() == (
        output / "trajectories" / "calc__calc-1" / "trajectory.json"
    ).read_bytes()
    metadata = yaml.safe_load((entry / "metadata.yaml").read_text())
    assert metadata["info"]["name"] == "CWM + cwm-agent"
    assert set(metadata["info"]) == {"name", "site", "report", "logo", "authors"}
    assert metadata["tags"]["system"] == {"attempts": "1"}
    assert metadata["tags"]["os_model"] is True and metadata["tags"]["checked"] is False
    readme = (entry / "README.md").read_text()
    assert readme.startswith("# CWM + cwm-agent\n")
    assert "1/3 graded predictions (33.3%), 1/4 of all instances run (25.0%)" in readme
    assert f"model: `replay:{replays}`" in readme and "no test-time scaling" in readme
    settings = tomllib.loads((output / "config.toml").read_text())
    assert f"```toml\n{(output / 'config.toml').read_text()}```" in readme
    assert settings["max_turns"] == 5 and settings["workers"] == 2
    again = run_cli(*bundle, "--eval", str(output))
    assert again.returncode == 1 and again.stderr == f"error: --out {entry} is not empty: " + (
        "choose a new folder\n"
    )
    # A run made before run.json recorded its settings: the README gives its options.
    record = json.loads((output / "run.json").read_text())
    del record["options"]["settings"]
    (output / "run.json").write_text(json.dumps(record))
    older = run_cli(*bundle[:-4], "--out", str(tmp_path / "older"), "--name", "older")
    assert older.returncode == 0, older.stderr
    readme = (tmp_path / "older" / "README.md").read_text()
    assert '```json\n{\n  "dataset": ' in readme and '"max_turns": 5' in readme


def test_a_config_file_fills_the_flags_and_config_toml_repeats_the_run(
    dataset: Path, replays: Path, tmp_path: Path, client: docker.DockerClient
) -> None:
    config = tmp_path / "run.toml"
    config.write_text(
        f'dataset = "{dataset}"\nmodel = "replay:{replays}"\ninstances = "calc__calc-3"\n'
        "max_turns = 2\nquiet = true\n"
    )
    first = tmp_path / "first"
    args = ("swebench", "run", "--config", str(config), "--output", str(first))
    done = run_cli(*args, "--max-turns", "4")
    assert done.returncode == 0, done.stderr + done.stdout
    result = json.loads((first / "trajectories/calc__calc-3/result.json").read_text())
    assert result["turns"] == 4  # the flag wins over the file's 2 (the replay has 6 turns)
    record = json.loads((first / "run.json").read_text())
    settings = record["options"]["settings"]
    assert record["sessions"][0]["options"]["settings"] == settings
    assert settings["max_turns"] == 4 and settings["instances"] == "calc__calc-3"
    assert (settings["dataset"], settings["output"]) == (str(dataset), str(first))
    assert settings["samples"] == 1 and settings["quiet"] is True  # defaults are recorded too
    written = tomllib.loads((first / "config.toml").read_text())
    assert written == {key: value for key, value in settings.items() if value is not None}

    # config.toml alone repeats the run (into a new --output).
    second = tmp_path / "second"
    again = run_cli(
        "swebench", "run", "--config", str(first / "config.toml"), "--output", str(second)
    )
    assert again.returncode == 0, again.stderr + again.stdout
    assert predictions(second) == predictions(first)
    assert json.loads((second / "trajectories/calc__calc-3/result.json").read_text())["turns"] == 4
    assert json.loads((second / "run.json").read_text())["options"]["settings"] == {
        **settings,
        "output": str(second),
    }
    assert batch_containers(client, first) == batch_containers(client, second) == []

    # eval takes a config file too; the first run with the second's eval is no entry.
    grading = tmp_path / "eval.toml"
    grading.write_text(
        f'predictions = "{second / "predictions.jsonl"}"\ndataset = "{dataset}"\nquiet = true\n'
    )
    graded = run_cli("swebench", "eval", "--config", str(grading))
    assert graded.returncode == 0 and "resolved 0/1" in graded.stdout, graded.stderr
    refused = run_cli(
        "swebench", "bundle", str(first), "--eval", str(second), "--out", str(tmp_path / "entry"),
        "--name", "x",
    )  # fmt: skip
    assert refused.returncode == 1 and not (tmp_path / "entry").exists()
    assert refused.stderr == (
        f"error: {second / 'report.json'} graded {second / 'predictions.jsonl'}, not the "
        f"predictions of {first}: grade {first / 'predictions.jsonl'} with `cwm-agent swebench "
        "eval`\n"
    )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_resume_after_a_kill_loses_and_repeats_nothing(
    dataset: Path, replays: Path, tmp_path: Path, client: docker.DockerClient, sig: int
) -> None:
    output = tmp_path / f"run-{sig}"
    args = run_args(dataset, replays, output)
    process = subprocess.Popen(
        [sys.executable, "-m", "cwm_agent.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,
    )
    deadline = time.monotonic() + 120
    while not (output / "predictions.jsonl").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # the next instance is under way
    process.send_signal(sig)
    code = process.wait(timeout=60)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 130), process.stderr.read()
    before = predictions(output)
    assert 1 <= len(before) < 3

    again = run_cli(*run_args(dataset, replays, output, "--resume"))
    assert again.returncode == 1 and "1 error(s)" in again.stdout, again.stderr  # calc-4
    after = predictions(output)
    assert after[: len(before)] == before
    assert sorted(p["instance_id"] for p in after) == [
        "calc__calc-1",
        "calc__calc-2",
        "calc__calc-3",
    ]
    record = json.loads((output / "run.json").read_text())
    assert [s["skipped"] for s in record["sessions"]] == [0, len(before)]
    assert record["sessions"][1]["finished"] == 3 - len(before)
    assert batch_containers(client, output) == []
    refused = run_cli(*run_args(dataset, replays, output))
    assert refused.returncode == 1 and "add --resume" in refused.stderr


def test_samples_pick_a_patch_per_instance_with_test_time_scaling(
    dataset: Path, calc: dict[str, object], tmp_path: Path, client: docker.DockerClient
) -> None:
    """Two candidates (wrong, gold) and one reproduction test: the gold patch is predicted."""
    gold: dict[str, str] = calc["gold"]  # type: ignore[assignment]
    repo: Path = calc["repo"]  # type: ignore[assignment]
    wrong = diff(repo, "calc.py", FIXES["calc__calc-2"][0], WRONG)
    submit = [call("submit", "/tmp/fix.patch"), "Submitted.\n</think>\n\nDone."]
    test = (
        "from calc import clamp\n\n"
        "print('Issue resolved' if clamp(9, 0, 5) == 5 else 'Issue reproduced')\n"
    )
    scripts = {
        "candidate-0": [write_patch(wrong), *submit],
        "candidate-1": [write_patch(gold["calc__calc-2"]), *submit],
        "testgen-0": [
            call("create", f"test_issue.py\n{test}"),
            call("submit", "test_issue.py"),
            "Submitted.\n</think>\n\nThe test checks the upper bound.",
        ],
    }
    folder = tmp_path / "replays" / "calc__calc-2"
    folder.mkdir(parents=True)
    for name, replies in scripts.items():
        (folder / f"{name}.json").write_text(json.dumps(replies))
    output = tmp_path / "run"
    args = run_args(dataset, folder.parent, output, "--instances", "calc__calc-2")
    done = run_cli(*args, "--samples", "2", "--test-samples", "1")
    assert done.returncode == 0, done.stderr + done.stdout

    [line] = predictions(output)
    assert line["model_patch"] == gold["calc__calc-2"]
    instance = output / "trajectories" / "calc__calc-2"
    report = json.loads((instance / "tts.json").read_text())
    assert report["selected"] == 1 and report["decision"].startswith("candidate 1: highest score")
    assert [c["generated"] for c in report["candidates"]] == [{"0": False}, {"0": True}]
    result = json.loads((instance / "result.json").read_text())
    assert result["status"] == "submitted" and result["start"] == report["start"]
    # The cost of every rollout and test run, split three ways.
    parts = result["usage_by_part"]
    for part, folder in (("candidates", "candidates"), ("testgen", "testgen")):
        rollouts = [json.loads(p.read_text()) for p in instance.glob(f"{folder}/*/trajectory.json")]
        assert len(rollouts) == (2 if part == "candidates" else 1)
        assert parts[part]["prompt_tokens"] == sum(r["prompt_tokens"] for r in rollouts) > 0
        assert parts[part]["completion_tokens"] == sum(r["completion_tokens"] for r in rollouts)
    assert parts["tests"] == {
        "prompt_tokens": 0, "completion_tokens": 0, "model_s": 0.0,
        "sandbox_s": round(report["testing"]["container_s"], 3),
    }  # fmt: skip
    # Every test container was open at least as long as the runs it held.
    tested = report["regression"]["baseline_s"] + sum(
        c["regression_s"] for c in report["candidates"] if c["tested_as"] == c["index"]
    )
    assert parts["tests"]["sandbox_s"] >= tested > 0
    for key in ("prompt_tokens", "completion_tokens", "model_s", "sandbox_s"):
        assert result["usage"][key] == pytest.approx(sum(p[key] for p in parts.values()))
    data = json.loads(run_cli("swebench", "report", str(output), "--json").stdout)
    assert data["usage_by_part"] == parts and data["usage"] == result["usage"]
    shown = run_cli("swebench", "report", str(output)).stdout
    assert "candidate rollouts" in shown and "test-generation rollouts" in shown

    # Its leaderboard entry: the selected candidate's trajectory, tts.json beside it.
    graded = run_cli(
        "swebench", "eval", "--predictions", str(output / "predictions.jsonl"),
        "--dataset", str(dataset), "--quiet",
    )  # fmt: skip
    assert graded.returncode == 0 and "resolved 1/1" in graded.stdout, graded.stderr
    entry = tmp_path / "entry"
    bundled = run_cli("swebench", "bundle", str(output), "--out", str(entry), "--name", "K=2")
    assert bundled.returncode == 0, bundled.stderr
    trajs = entry / "trajs"
    assert sorted(p.name for p in trajs.iterdir()) == ["calc__calc-2.json", "calc__calc-2.tts.json"]
    selected = json.loads((trajs / "calc__calc-2.json").read_text())
    assert selected == json.loads((instance / "candidates/candidate-1/trajectory.json").read_text())
    assert json.loads((trajs / "calc__calc-2.tts.json").read_text()) == report
    assert yaml.safe_load((entry / "metadata.yaml").read_text())["tags"]["system"] == {
        "attempts": "2+"
    }
    assert (
        "K = 2 candidate rollouts, M = 1 test-generation rollouts"
        in (entry / "README.md").read_text()
    )
    assert result["start"] == git(repo, "rev-parse", "main").strip()
    assert batch_containers(client, output) == []


def test_a_file_changing_under_edit_does_not_end_the_batch(
    dataset: Path, calc: dict[str, object], tmp_path: Path, client: docker.DockerClient
) -> None:
    """Issue 13.1: 30 edits of a file a background job keeps truncating and refilling."""
    gold: dict[str, str] = calc["gold"]  # type: ignore[assignment]
    writer = (
        "setsid nohup timeout 60 bash -c 'while :; do head -c 2000000 /dev/zero > "
        "/testbed/app.log; : > /testbed/app.log; done' >/dev/null 2>&1 &"
    )
    submit = [call("submit", "/tmp/fix.patch"), "Submitted.\n</think>\n\nDone."]
    folder = tmp_path / "replays"
    folder.mkdir()
    scripts = {
        "calc__calc-1": [
            call("bash", writer),
            *[call("edit", "/testbed/app.log\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE")]
            * 30,
            write_patch(gold["calc__calc-1"]),
            *submit,
        ],
        "calc__calc-2": [write_patch(gold["calc__calc-2"]), *submit],
    }
    for instance_id, replies in scripts.items():
        (folder / f"{instance_id}.json").write_text(json.dumps(replies))
    output = tmp_path / "run"
    args = run_args(dataset, folder, output, "--instances", "calc__calc-1,calc__calc-2")
    done = run_cli(*args, "--max-turns", "40", "--workers", "2")
    assert done.returncode == 0, done.stderr + done.stdout
    assert {p["instance_id"]: p["model_patch"] for p in predictions(output)} == {
        "calc__calc-1": gold["calc__calc-1"],
        "calc__calc-2": gold["calc__calc-2"],
    }
    trajectory = json.loads((output / "trajectories/calc__calc-1/trajectory.json").read_text())
    outputs = [m["tool_result"]["output"] for m in trajectory["messages"] if m["tool_result"]]
    changed = "The file /testbed/app.log changed while it was being read, so it was not edited."
    assert any(out.startswith(changed) for out in outputs)
    assert batch_containers(client, output) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_while_containers_are_created_stops_every_instance(
    dataset: Path, tmp_path: Path, client: docker.DockerClient, sig: int
) -> None:
    """Issue 13.4: the signal lands while the workers' sandboxes are being created; their
    rollouts (a minute each) must not run on after it."""
    folder = tmp_path / "replays"
    folder.mkdir()
    for n in (1, 2, 3):
        (folder / f"calc__calc-{n}.json").write_text(json.dumps([call("bash", "sleep 20")] * 3))
    # 0.0 s: the signal lands as run.json appears, before any worker exists (it once
    # went unrecorded about 1 run in 10, so it is tried twice).
    for delay in (0.0, 0.0, 0.05, 0.15, 0.3):
        output = tmp_path / f"run-{uuid.uuid4().hex[:8]}"  # its name labels the batch
        ids = "calc__calc-1,calc__calc-2,calc__calc-3"
        args = run_args(dataset, folder, output, "--instances", ids)
        process = start_cli(*args, "--workers", "3", "--session-timeout", "60")
        deadline = time.monotonic() + 120
        while not (output / "run.json").exists():  # written just before the workers start
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.01)
        time.sleep(delay)
        process.send_signal(sig)
        try:
            _, err = process.communicate(timeout=30)  # not after the rollouts' minute
        except subprocess.TimeoutExpired:
            process.kill()  # its containers go with it (the keep-alive guard)
            pytest.fail(f"{sig} {delay}s after the workers started did not stop the run")
        assert process.returncode == 130, err
        assert "Traceback" not in err
        time.sleep(3)
        assert batch_containers(client, output) == []
        assert not (output / "predictions.jsonl").exists()
        record = json.loads((output / "run.json").read_text())
        assert record["sessions"][0]["interrupted"] is True


def test_resume_refuses_another_dataset_or_a_changed_row(
    dataset: Path, replays: Path, tmp_path: Path
) -> None:
    """Issue 13.8: predictions of two datasets must not mix."""
    output = tmp_path / "run"
    done = run_cli(*run_args(dataset, replays, output, "--instances", "calc__calc-1"))
    assert done.returncode == 0, done.stderr + done.stdout
    before = (output / "predictions.jsonl").read_text()
    other = tmp_path / "other.jsonl"
    other.write_text(dataset.read_text())
    refused = run_cli(*run_args(other, replays, output, "--resume"))
    assert refused.returncode == 1
    assert refused.stderr == (
        f"error: --resume: {output} was run on --dataset {dataset} (split test), not {other} "
        "(split test): one predictions file holds one dataset's instances\n"
    )
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    rows[0]["problem_statement"] = "something else entirely\n"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    changed = run_cli(*run_args(dataset, replays, output, "--resume"))
    assert changed.returncode == 1
    assert changed.stderr == (
        "error: --resume: the row of calc__calc-1 changed since the run began: resume with "
        "the dataset it was started with, or start a new --output\n"
    )
    assert (output / "predictions.jsonl").read_text() == before


def test_eval_exits_1_when_an_instance_could_not_be_graded(
    dataset: Path, calc: dict[str, object], tmp_path: Path
) -> None:
    """Issue 23.4: as `run` does, so scripts can tell (calc-4's image is missing)."""
    predicted = tmp_path / "predictions.jsonl"
    gold: dict[str, str] = calc["gold"]  # type: ignore[assignment]
    predicted.write_text(
        "".join(
            json.dumps({"instance_id": i, "model_name_or_path": "m", "model_patch": gold[k]}) + "\n"
            for i, k in (("calc__calc-1", "calc__calc-1"), ("calc__calc-4", "calc__calc-1"))
        )
    )
    graded = run_cli(
        "swebench", "eval", "--predictions", str(predicted), "--dataset", str(dataset), "--quiet"
    )
    assert graded.returncode == 1, graded.stderr + graded.stdout
    assert "resolved 1/2 (50.0%)" in graded.stdout
    assert graded.stderr == "error: 1 instance(s) could not be graded\n"
    report = json.loads((tmp_path / "report.json").read_text())
    assert (
        report["counts"]["error"] == 1
        and "not found" in report["instances"]["calc__calc-4"]["reason"]
    )
