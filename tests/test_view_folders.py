"""`cwm-agent view` on run folders made to mislead it: paths and links that lead out of
the folder, a foreign Host, escape sequences, records cut short. Run folders travel (CI
artifacts, a colleague's batch), so the view must read and write only inside the one
it is given. The folders are written here from the run records' own models; the pages
are checked as written and, where it matters, in headless Chromium.
"""

from __future__ import annotations

import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cwm_agent.agent import Trajectory
from cwm_agent.agent.trajectory import MessageRecord, ToolCallRecord, ToolResultRecord
from cwm_agent.swebench.runner import InstanceResult
from cwm_agent.tts import TTSReport
from cwm_agent.tts.options import TTSOptions
from cwm_agent.tts.regression import RegressionPlan
from cwm_agent.tts.report import CandidateReport
from tests.browser import dump_dom
from tests.conftest import run_cli, start_cli

SECRET = "SECRET-FROM-ANOTHER-RUN"
RED = "\x1b[31mFAILED\x1b[0m test_parse"


def trajectory(issue: str, output: str = "ok") -> Trajectory:
    """A one-turn rollout: a bash call, its output, and the final reply."""
    call = MessageRecord(
        role="assistant",
        content="look</think>\n<tool: bash>\npytest\n</tool>",
        turn=1,
        tool_call=ToolCallRecord(name="bash", argument="pytest"),
    )
    result = MessageRecord(
        role="user",
        content=f"<output>{output}</output>",
        turn=1,
        tool_result=ToolResultRecord(output=output, ok=False, exit_code=1, duration_s=0.1),
    )
    final = MessageRecord(role="assistant", content="done</think>\nfixed", turn=2)
    return Trajectory(
        task="issue",
        model="replay:x.json",
        config={},
        issue=issue,
        status="finished",
        turns=2,
        started_at="2026-01-01T00:00:00Z",
        messages=[MessageRecord(role="user", content=issue, turn=0), call, result, final],
    )


def rollout(folder: Path, issue: str, output: str = "ok") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trajectory.json").write_text(trajectory(issue, output).model_dump_json())
    return folder


def instance(batch: Path, folder: str, instance_id: str) -> None:
    """`trajectories/FOLDER/result.json` saying it is INSTANCE_ID, beside a trajectory."""
    place = rollout(batch / "trajectories" / folder, f"issue of {folder}")
    result = InstanceResult(
        instance_id=instance_id, repo="acme/calc", difficulty=None, image="x", status="submitted"
    )
    (place / "result.json").write_text(result.model_dump_json())


def view(folder: Path, *extra: str) -> Path:
    done = run_cli("view", str(folder), *extra)
    assert done.returncode == 0, done.stderr + done.stdout
    return folder / "index.html"


@pytest.fixture
def other(tmp_path: Path) -> Path:
    """Another run beside the one viewed, whose trajectory must not show."""
    return rollout(tmp_path / "other" / "run", SECRET)


@pytest.fixture
def batch(tmp_path: Path, other: Path) -> Path:
    """A batch with one good instance and one whose id climbs to `other`."""
    folder = tmp_path / "batch"
    instance(folder, "acme__calc-1", "acme__calc-1")
    instance(folder, "evil", "../../other/run")
    return folder


def test_an_instance_id_that_leads_out_is_skipped_with_a_note(batch: Path, other: Path) -> None:
    page = view(batch)
    assert not (other / "index.html").exists()  # nothing written into the other run
    written = sorted(p.relative_to(batch).as_posix() for p in batch.rglob("index.html"))
    assert written == ["index.html", "trajectories/acme__calc-1/index.html"]
    assert SECRET not in page.read_text()
    dom = dump_dom(page.as_uri())
    ids = [r.attrs["data-id"] for r in dom.one("table", "instances").one("tbody").all("tr")]
    assert ids == ["acme__calc-1"]
    note = dom.one("section", "skipped").text
    assert "instance id '../../other/run': not an id swebench run makes" in note


@pytest.fixture
def served(batch: Path) -> Iterator[str]:
    server = start_cli("view", str(batch), "--serve", "--port", "0")
    try:
        line = server.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith(f"serving {batch} at http://127.0.0.1:"), line
        yield line.split(" at ")[1].split()[0]
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0, server.stderr.read()  # type: ignore[union-attr]


def get(url: str, host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as failed:
        return failed.code, failed.fp.read().decode()


def test_serve_opens_no_path_out_of_the_run(served: str) -> None:
    assert get(served + "instance/acme__calc-1")[0] == 200
    for path in ("instance/..%2F..%2Fother%2Frun", "instance/../../other/run", "instance/evil"):
        code, body = get(served + path)
        assert code == 404 and SECRET not in body, path


def test_serve_answers_only_its_own_names(served: str) -> None:
    """DNS rebinding: a page at attacker.example makes its name resolve to 127.0.0.1 and
    reads the answers; its requests still carry its own name in Host."""
    port = served.rsplit(":", 1)[1].rstrip("/")
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        assert get(served, host)[0] == 200, host
    for host in (f"attacker.example:{port}", "attacker.example", f"localhost:{int(port) + 1}"):
        code, body = get(served, host)
        assert code == 421 and body == f"Host {host!r} is not this server: open {served}"
    # The same in a browser whose resolver maps the attacker's name to this machine.
    rebound = f"http://attacker.example:{port}/"
    dom = dump_dom(rebound, "--host-resolver-rules=MAP attacker.example 127.0.0.1")
    assert "is not this server" in dom.text and "acme__calc-1" not in dom.text


def test_a_scaling_candidate_out_of_the_run_is_skipped(tmp_path: Path, other: Path) -> None:
    folder = rollout(tmp_path / "tts", "the scaled issue")
    rollout(folder / "candidates" / "0", "candidate zero's issue")
    candidates = [
        CandidateReport(index=0, status="finished", trajectory="candidates/0/trajectory.json"),
        CandidateReport(index=1, status="finished", trajectory="../other/run/trajectory.json"),
        CandidateReport(index=2, status="finished", trajectory=str(other / "trajectory.json")),
    ]
    report = TTSReport(
        options=TTSOptions(samples=3),
        candidates=candidates,
        generated_tests=[],
        groups=[],
        regression=RegressionPlan(),
        selected=0,
        decision="candidate 0",
        duration_s=1.0,
        phases_s={},
    )
    (folder / "tts.json").write_text(report.model_dump_json())
    page = view(folder)
    assert SECRET not in page.read_text()
    dom = dump_dom(page.as_uri())
    assert dom.one("div", id="candidate-0").one("section", "summary")
    notes = [li.text for li in dom.one("section", "skipped").all("li")]
    assert [n.split(":")[0] for n in notes] == ["candidate-1", "candidate-2"]
    assert all("leads out of" in n for n in notes)


def test_a_link_out_of_the_run_is_refused(tmp_path: Path, other: Path) -> None:
    folder = rollout(tmp_path / "run", "the issue")
    (folder / "patch.diff").symlink_to(other / "trajectory.json")
    done = run_cli("view", str(folder))
    assert done.returncode == 1 and done.stdout == "" and SECRET not in done.stderr
    assert done.stderr == (
        f"error: {folder / 'patch.diff'} leads out of {folder}: refused "
        "(the view stays inside a run)\n"
    )
    assert not (folder / "index.html").exists()
    # A link that stays inside the folder is followed.
    (folder / "patch.diff").unlink()
    (folder / "kept.diff").write_text("+kept line\n")
    (folder / "patch.diff").symlink_to("kept.diff")
    assert "kept line" in view(folder).read_text()


def test_the_page_is_not_written_through_a_planted_link(tmp_path: Path) -> None:
    folder = rollout(tmp_path / "run", "the issue")
    target = tmp_path / "precious.txt"
    target.write_text("precious\n")
    (folder / "index.html.tmp").symlink_to(target)
    page = view(folder)
    assert target.read_text() == "precious\n"
    assert "the issue" in page.read_text() and not (folder / "index.html.tmp").exists()


def test_escape_sequences_do_not_reach_the_page(tmp_path: Path) -> None:
    folder = rollout(tmp_path / "run", "retitle \x1b]0;owned\x07 me", output=RED)
    (folder / "patch.diff").write_text("+\x1b[32mgreen\x1b[0m line\n")
    page = view(folder)
    html = page.read_text()
    assert "\x1b" not in html and "\x07" not in html
    dom = dump_dom(page.as_uri())
    assert "FAILED test_parse" in dom.one("li", id="turn-1").text
    assert "+green line" in dom.one("pre", "diff").text
    assert "retitle  me" in dom.text


def test_a_record_cut_short_says_so_and_names_its_file(tmp_path: Path) -> None:
    folder = rollout(tmp_path / "run", "the issue")
    path = folder / "trajectory.json"
    path.write_text(path.read_text()[:200])
    done = run_cli("view", str(folder))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {path} is incomplete: its JSON stops part-way (")
    assert done.stderr.endswith("); was its run cut off?\n")


def test_a_bad_result_names_its_file(tmp_path: Path) -> None:
    folder = rollout(tmp_path / "run", "the issue")
    path = folder / "result.json"
    path.write_text('{"start_commit": 5}')
    done = run_cli("view", str(folder))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr == f"error: {path} is not a valid FixResult record: status: Field required\n"
    path.write_text("[1, 2")
    done = run_cli("view", str(folder))
    assert done.stderr.startswith(f"error: {path} is incomplete: its JSON stops part-way (")
    assert not (folder / "index.html").exists()
