"""`cwm-agent view` on real run folders, checked in a real browser.

The folders come from real runs with the bundled replays: `fix` on examples/calc,
test-time scaling on examples/clamp, and a SWE-bench batch (the fixture dataset
of test_swebench_run: run, eval). Headless Chromium loads each page and the
assertions read the DOM its script left, against what the run's JSON says.
Set CWM_AGENT_VIEW_SHOTS=DIR to keep the screenshots (docs/ holds such a set).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cwm_agent.agent import Trajectory
from cwm_agent.swebench.report import summarize
from cwm_agent.swebench.runner import InstanceResult
from tests.browser import Element, dump_dom, screenshot
from tests.conftest import default_signals, run_cli
from tests.helpers import (  # noqa: F401  (fixtures)
    CALC_EXAMPLE,
    CLAMP_EXAMPLE,
    calc,
    calc_image,
    call,
    committed_copy,
    dataset,
    fix_args,
    replays,
    run_args,
    scaled_fix_args,
)

PNG = b"\x89PNG\r\n\x1a\n"


def view(folder: Path, *extra: str) -> Path:
    done = run_cli("view", str(folder), *extra)
    assert done.returncode == 0, done.stderr + done.stdout
    return folder / "index.html"


def shot(url: str, name: str, tmp_path: Path, height: int = 1400) -> None:
    """A screenshot of the page: a real PNG of the window's size, kept if asked for."""
    keep = os.environ.get("CWM_AGENT_VIEW_SHOTS")
    path = screenshot(url, (Path(keep) if keep else tmp_path) / f"{name}.png", height=height)
    data = path.read_bytes()
    assert data.startswith(PNG)
    width, tall = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, tall) == (1280, height)


def shown(elements: list[Element]) -> list[Element]:
    return [e for e in elements if e.shown]


def turn_numbers(elements: list[Element]) -> list[int]:
    return [int(e.attrs["id"].rsplit("-", 1)[1]) for e in elements]


def load(path: Path) -> Trajectory:
    return Trajectory.model_validate_json(path.read_text())


# -- a rollout: fix on examples/calc -------------------------------------------


@pytest.fixture(scope="module")
def calc_run(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> Path:
    root = tmp_path_factory.mktemp("view-calc")
    repo = committed_copy(CALC_EXAMPLE / "repo", root / "calc")
    output = root / "run"
    model = f"replay:{CALC_EXAMPLE / 'replay.json'}"
    done = run_cli(*fix_args(repo, base_image, output, model))
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"view: cwm-agent view {output}" in done.stdout  # fix says how to open the view
    return output


@pytest.mark.docker
def test_a_rollout_page_shows_every_turn(calc_run: Path, tmp_path: Path) -> None:
    trajectory = load(calc_run / "trajectory.json")
    page = view(calc_run)
    dom = dump_dom(page.as_uri())

    turns = dom.all("li", "turn")
    assert turn_numbers(turns) == list(range(1, trajectory.turns + 1))
    replies = [m for m in trajectory.messages if m.role == "assistant"]
    errors = [m.turn for m in replies if m.format_error is not None]
    failed = [m.turn for m in trajectory.messages if m.tool_result and not m.tool_result.ok]
    assert errors == [3] and failed == [4]  # the replay's format error and failed edit
    assert [int(t.attrs["id"][5:]) for t in turns if "k-format-error" in t.classes] == errors
    assert [int(t.attrs["id"][5:]) for t in turns if "k-failed" in t.classes] == failed
    assert "k-final" in turns[-1].classes
    assert replies[2].format_error in turns[2].one("p", "format-error").text
    reasoning = dom.all("details", "reasoning")
    assert len(reasoning) == trajectory.turns and not any("open" in d.attrs for d in reasoning)
    summary = dom.one("section", "summary")
    assert trajectory.status in summary.text and "applies" in summary.text
    added = [line for line in (calc_run / "patch.diff").read_text().splitlines() if line[0] == "+"]
    assert [s.text for s in dom.one("pre", "diff").all("span", "gi")] == added
    chart = dom.one("figure", "tokens")
    assert len(chart.one("polyline").attrs["points"].split()) == trajectory.turns
    assert f"{trajectory.tokens_used:,} tokens" in chart.text
    shot(page.as_uri(), "rollout", tmp_path, height=1100)

    # The page's script reads its filters from the address.
    problems = shown(dump_dom(page.as_uri() + "#only=problems").all("li", "turn"))
    assert turn_numbers(problems) == errors + failed
    searched = dump_dom(page.as_uri() + "#q=unittest")
    outputs = {m.turn: m.tool_result.output for m in trajectory.messages if m.tool_result}
    expected = [
        m.turn for m in replies if "unittest" in (m.content + outputs.get(m.turn, "")).lower()
    ]
    assert turn_numbers(shown(searched.all("li", "turn"))) == expected
    assert searched.one("span", id="search-count").text == f"{len(expected)} / {trajectory.turns}"


@pytest.mark.docker
def test_a_restarted_shell_is_flagged(tmp_path: Path, base_image: str) -> None:
    """A command that outlives --session-timeout: bash restarts the shell, the page says so."""
    repo = committed_copy(CALC_EXAMPLE / "repo", tmp_path / "calc")
    replay = tmp_path / "replay.json"
    replay.write_text(json.dumps([call("bash", "sleep 30"), call("bash", "pwd")]))
    output = tmp_path / "run"
    args = fix_args(repo, base_image, output, f"replay:{replay}")
    done = run_cli(*args, "--session-timeout", "1", "--max-turns", "2")
    assert done.returncode == 1 and (output / "trajectory.json").is_file(), done.stderr
    dom = dump_dom(view(output).as_uri() + "#only=problems")
    assert turn_numbers(shown(dom.all("li", "turn"))) == [1]
    assert dom.one("li", id="turn-1").one("span", "restart").text == "shell restarted (timeout)"
    assert "k-ok" in dom.one("li", id="turn-2").classes


def test_bad_folders_get_one_line(tmp_path: Path) -> None:
    missing = run_cli("view", str(tmp_path / "nope"))
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr == (
        f"error: {tmp_path / 'nope'} is not a folder: give a run folder (fix, ci or swebench run)\n"
    )
    empty = run_cli("view", str(tmp_path))
    assert empty.returncode == 1
    assert empty.stderr.startswith(
        f"error: {tmp_path} holds no trajectory.json, tts.json or run.json"
    )
    (tmp_path / "trajectory.json").write_text("{")
    broken = run_cli("view", str(tmp_path))
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert broken.stderr.startswith(f"error: {tmp_path / 'trajectory.json'} is incomplete: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trajectory.json"]  # nothing written


# -- test-time scaling: examples/clamp, 5 candidates x 4 test generators -------


@pytest.fixture(scope="module")
def clamp_run(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> Path:
    root = tmp_path_factory.mktemp("view-clamp")
    repo = committed_copy(CLAMP_EXAMPLE / "repo", root / "clamp")
    output = root / "run"
    scripts = CLAMP_EXAMPLE / "replays"
    args = scaled_fix_args(repo, base_image, output, scripts, "--samples", "5")
    done = run_cli(*args, "--test-samples", "4")
    assert done.returncode == 0, done.stderr + done.stdout
    return output


@pytest.mark.docker
def test_a_scaling_page_explains_the_choice(clamp_run: Path, tmp_path: Path) -> None:
    report = json.loads((clamp_run / "tts.json").read_text())
    page = view(clamp_run)
    dom = dump_dom(page.as_uri())

    assert dom.one("p", "decision").text == report["decision"]
    rows = dom.one("table", "candidates").all("tr", "searchable")
    assert [int(r.attrs["data-candidate"]) for r in rows] == [
        c["index"] for c in report["candidates"]
    ]
    selected = [r for r in rows if "selected" in r.classes]
    assert [int(r.attrs["data-candidate"]) for r in selected] == [report["selected"]]
    assert selected[0].all("span", "star")
    for row, candidate in zip(rows, report["candidates"], strict=True):
        assert (candidate["why_not"] or "") in row.text
        first = candidate["tested_as"]
        shown_as = "" if first is None else "itself" if first == candidate["index"] else f"{first}"
        assert row.one("td", "tested-as").text.endswith(shown_as)
    testing = report["testing"]
    assert f"{testing['containers']} containers" in dom.one("div", id="overview").text

    matrix = dom.one("table", "matrix")
    kept = [t for t in report["generated_tests"] if t["kept"]]
    regression = sorted({name for c in report["candidates"] for name in c["regression"]})
    heads = matrix.one("thead").all("tr")[-1].all("th")[1:]
    assert len(heads) == len(regression) + len(kept)
    assert len([h for h in heads if "top" in h.classes]) == sum(t["in_top_groups"] for t in kept)
    for row, candidate in zip(matrix.one("tbody").all("tr"), report["candidates"], strict=True):
        outcomes = [candidate["regression"].get(n) for n in regression]
        outcomes += [candidate["generated"].get(str(t["index"])) for t in kept]
        marks = {True: "pass", False: "fail", None: "none"}
        assert [({"pass", "fail", "none"} & c.classes).pop() for c in row.all("td")] == [
            marks[o] for o in outcomes
        ]
    dropped = dom.one("table", "tests").all("tr", "dropped")
    assert [r.all("td")[4].text for r in dropped] == [
        t["dropped_because"] for t in report["generated_tests"] if not t["kept"]
    ]
    shot(page.as_uri(), "tts", tmp_path, height=1250)

    # Each candidate's trajectory is one click away, in the same file.
    worst = report["candidates"][3]
    opened = dump_dom(page.as_uri() + "#view=candidate-3")
    assert not opened.one("div", id="overview").shown
    rollout = opened.one("div", id="candidate-3")
    assert rollout.shown
    turns = load(clamp_run / worst["trajectory"]).turns
    assert turn_numbers(rollout.all("li", "turn")) == list(range(1, turns + 1))
    assert "max turns" in rollout.one("section", "summary").text
    assert rollout.one("p", "back").text.endswith(f"candidate 3: {worst['why_not']}")


@pytest.mark.docker
def test_a_batch_instance_run_with_scaling_gets_the_scaling_page(
    clamp_run: Path, tmp_path: Path
) -> None:
    """`swebench run --samples` leaves tts.json in the instance's folder; --out elsewhere."""
    batch = tmp_path / "batch"
    shutil.copytree(clamp_run, batch / "trajectories" / "acme__clamp-1")
    result = InstanceResult(
        instance_id="acme__clamp-1",
        repo="acme/clamp",
        difficulty=None,
        image="x",
        status="submitted",
    )
    (batch / "trajectories" / "acme__clamp-1" / "result.json").write_text(result.model_dump_json())
    page = tmp_path / "pages" / "batch.html"
    page.parent.mkdir()
    view(batch, "--out", str(page))
    link = dump_dom(page.as_uri()).one("tr", data_id="acme__clamp-1").one("a").attrs["href"]
    assert link == "../batch/trajectories/acme__clamp-1/index.html"
    instance = dump_dom((page.parent / link).resolve().as_uri())
    selected = json.loads((clamp_run / "tts.json").read_text())["selected"]
    candidates = instance.one("table", "candidates")
    assert candidates.one("tr", "selected").attrs["data-candidate"] == str(selected)
    assert "acme__clamp-1" in instance.one("span", "crumb").text


# -- a SWE-bench batch ---------------------------------------------------------


@pytest.mark.docker
def test_a_batch_page_and_its_instances(
    dataset: Path,  # noqa: F811
    replays: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    output = tmp_path / "batch"
    done = run_cli(*run_args(dataset, replays, output, "--workers", "2"))
    # 1: one fixture instance's image is missing, an error scripts must be able to see
    assert done.returncode == 1, done.stderr + done.stdout
    assert "1 instance(s) ended in an error" in done.stderr
    assert f"view: cwm-agent view {output}" in done.stdout
    graded = run_cli(
        "swebench", "eval", "--predictions", str(output / "predictions.jsonl"),
        "--dataset", str(dataset), "--quiet",
    )  # fmt: skip
    assert graded.returncode == 0, graded.stderr + graded.stdout
    results = {
        p.parent.name: json.loads(p.read_text()) for p in output.glob("trajectories/*/result.json")
    }
    statuses = {
        i: r["status"]
        for i, r in json.loads((output / "report.json").read_text())["instances"].items()
    }
    outcome = {
        i: {"empty_patch": "empty"}.get(statuses.get(i, r["status"]), statuses.get(i, r["status"]))
        for i, r in results.items()
    }
    assert sorted(outcome.values()) == ["empty", "error", "resolved", "unresolved"]

    page = view(output)
    dom = dump_dom(page.as_uri())
    rows = dom.one("table", "instances").one("tbody").all("tr")
    assert {r.attrs["data-id"]: r.attrs["data-outcome"] for r in rows} == outcome
    assert {r.attrs["data-id"]: r.all("td")[7].text for r in rows} == {
        i: r["worker"] for i, r in results.items()
    }
    headline = dom.one("div", "headline").text
    assert "resolved: 1 of the 3 graded predictions" in headline
    assert "1 of all 4 instances run (an error counts as unresolved)" in headline
    summary = summarize(output)
    facts = {
        d.one("dt").text: d.one("dd").text for d in dom.one("dl", "facts").all("div")
    }  # the batch's cost, totals over every instance
    assert facts["prompt tokens"] == f"{summary.usage.prompt_tokens:,}"
    assert facts["completion tokens"] == f"{summary.usage.completion_tokens:,}"
    assert facts["model time"] == f"{summary.usage.model_s:.1f} s"
    assert facts["sandbox time"] == f"{summary.usage.sandbox_s:.1f} s"
    by_repo = dom.all("figure", "chart")[0]
    assert by_repo.one("figcaption").text == "resolved by repo"
    for repo, group in summary.by_repo.items():
        assert f"{group.resolved}/{group.instances}" in by_repo.text and repo in by_repo.text
    captions = [f.one("figcaption").text for f in dom.all("figure", "chart")]
    assert captions == [
        "resolved by repo", "resolved by difficulty", "turns", "tokens", "wall time",
        "errors by kind",
    ]  # fmt: skip
    shot(page.as_uri(), "batch", tmp_path, height=800)

    unresolved = dump_dom(page.as_uri() + "#outcome=unresolved")
    assert [r.attrs["data-id"] for r in shown(unresolved.all("tr", "searchable"))] == [
        i for i, o in outcome.items() if o == "unresolved"
    ]
    both = dump_dom(page.as_uri() + "#repo=calc%2Fcalc&outcome=resolved")
    assert [r.attrs["data-id"] for r in shown(both.all("tr", "searchable"))] == ["calc__calc-1"]
    assert both.one("span", id="shown").text == "1 of 4 instances"
    by_tokens = dump_dom(page.as_uri() + "#sort=-tokens")
    order = [r.attrs["data-id"] for r in by_tokens.one("table", "instances").one("tbody").all("tr")]
    assert order == sorted(results, key=lambda i: -results[i]["tokens_used"])

    # One click to each instance that ran: its own page beside its results.
    links = {r.attrs["data-id"]: r.all("a") for r in rows}
    assert links["calc__calc-4"] == []  # its image is missing: no trajectory, no page
    instance = output / "trajectories" / "calc__calc-1"
    assert links["calc__calc-1"][0].attrs["href"] == "trajectories/calc__calc-1/index.html"
    first = dump_dom((instance / "index.html").as_uri())
    turns = load(instance / "trajectory.json").turns
    assert turn_numbers(first.all("li", "turn")) == list(range(1, turns + 1))
    assert "calc__calc-1" in first.one("section", "summary").text

    served_batch(output, outcome)


def served_batch(output: Path, outcome: dict[str, str]) -> None:
    """`--serve`: the index reads no trajectory, an instance's is read when it is opened."""
    (output / "trajectories" / "calc__calc-3" / "trajectory.json").write_text("{")
    server = subprocess.Popen(
        [sys.executable, "-m", "cwm_agent.cli", "view", str(output), "--serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_signals,
    )
    try:
        line = server.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith(f"serving {output} at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split()[0]
        index = dump_dom(url)
        rows = index.one("table", "instances").one("tbody").all("tr")
        assert {r.attrs["data-id"]: r.attrs["data-outcome"] for r in rows} == outcome
        served = dump_dom(url + "instance/calc__calc-2")
        turns = load(output / "trajectories" / "calc__calc-2" / "trajectory.json").turns
        assert len(served.all("li", "turn")) == turns
        for path, code in (
            ("instance/calc__calc-3", 500),  # broken on disk, and found only now
            ("instance/calc__calc-9", 404),
            ("instance/..%2F..%2Frun.json", 404),
            ("nothing-here", 404),
        ):
            with pytest.raises(urllib.error.HTTPError) as failed:
                urllib.request.urlopen(url + path, timeout=30)
            assert failed.value.code == code, path
            if code == 500:
                assert b"trajectory.json is incomplete: " in failed.value.fp.read()
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0, server.stderr.read()  # type: ignore[union-attr]
