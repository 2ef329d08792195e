"""The sandbox against a real Docker engine: session semantics, limits, teardown."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import uuid
from pathlib import Path

import docker
import pytest

from cwm_agent.agent import RolloutConfig, run_rollout
from cwm_agent.model.replay import ReplayPolicy
from cwm_agent.sandbox import (
    LABEL,
    ImageNotFoundError,
    NoBashError,
    Sandbox,
    SandboxConfig,
)
from cwm_agent.tools import Toolbox
from tests.conftest import containers_of, default_signals
from tests.helpers import call

pytestmark = pytest.mark.docker


def test_state_persists_between_calls(sandbox: Sandbox) -> None:
    session = sandbox.session
    assert session is not None
    assert session.run('cd /tmp && export GREETING=hi && shout() { echo "$1!"; }').exit_code == 0
    result = session.run("pwd; echo $GREETING; shout hey")
    assert result.output == "/tmp\nhi\nhey!\n"
    assert result.exit_code == 0


def test_stderr_is_merged_and_exit_codes_recorded(sandbox: Sandbox) -> None:
    session = sandbox.session
    assert session is not None
    result = session.run("echo out; echo err >&2; exit_code_of() { return 3; }; exit_code_of")
    assert result.output == "out\nerr\n"
    assert result.exit_code == 3
    assert session.run("echo $?").output == "3\n"  # `$?` carries over like in a terminal
    assert [r.exit_code for r in session.history] == [3, 0]
    assert all(r.duration_s > 0 for r in session.history)


def test_output_is_exact_including_missing_final_newline(sandbox: Sandbox) -> None:
    session = sandbox.session
    assert session is not None
    assert session.run("printf 'a\\n\\nb'").output == "a\n\nb"
    assert session.run("true").output == ""


def test_timeout_kills_and_restarts_in_start_directory(
    client: docker.DockerClient, base_image: str, run_label: str
) -> None:
    config = SandboxConfig(
        image=base_image,
        workdir="/testbed",
        session_timeout=1,
        startup=["export FROM_STARTUP=yes", "cd /"],
        labels={f"{LABEL}.run": run_label},
    )
    with Sandbox(config, client) as box:
        session = box.session
        assert session is not None
        session.run("cd /tmp; (sleep 300; echo survivor > /tmp/mark) & sleep 60")
        assert session.history[-1].failure == "timeout"
        after = session.run("pwd; echo $FROM_STARTUP")
        assert after.output == "/testbed\nyes\n"
        _, out, _ = box.exec(["bash", "-c", "cat /proc/[0-9]*/cmdline"])
        assert b"sleep\x00300" not in out, "the timed-out command's children must be killed"


def test_output_cap_restarts_session(sandbox: Sandbox) -> None:
    session = sandbox.session
    assert session is not None
    fits = session.run("head -c 400000 /dev/zero | tr '\\0' x")
    assert fits.failure is None and len(fits.output) == 400000
    session.run("cd /tmp")
    too_much = session.run("head -c 600000 /dev/zero | tr '\\0' x")
    assert too_much.failure == "output"
    assert session.run("pwd").output == "/testbed\n"
    endless = session.run("yes")
    assert endless.failure == "output"


def test_binary_output_does_not_break_anything(sandbox: Sandbox) -> None:
    session = sandbox.session
    assert session is not None
    result = session.run("printf 'ok \\xff\\xfe\\x00 end'")
    assert result.output == "ok \ufffd\ufffd\x00 end"
    assert session.run("echo still here").output == "still here\n"


def test_stdin_reads_get_eof(sandbox: Sandbox) -> None:
    session = sandbox.session
    assert session is not None
    result = session.run(
        "cat; read -r line; echo \"[$line] $?\"; python3 -c 'input()' 2>&1 | tail -1"
    )
    assert result.failure is None
    assert result.output.splitlines() == ["[] 1", "EOFError: EOF when reading a line"]
    assert session.run("echo next").output == "next\n"  # the command stream was not eaten


def test_exit_restarts_the_session(sandbox: Sandbox) -> None:
    session = sandbox.session
    assert session is not None
    session.run("cd /tmp; X=1")
    assert session.run("exit 4").failure == "terminated"
    assert session.run('pwd; echo "[$X]"').output == "/testbed\n[]\n"


def test_background_process_does_not_block(sandbox: Sandbox) -> None:
    session = sandbox.session
    assert session is not None
    result = session.run("sleep 30 & echo started")
    assert result.failure is None  # the session timeout is 5 s
    assert result.output == "started\n"
    assert session.run("jobs | wc -l").output.strip() == "1"


def test_syntax_errors_do_not_hang(sandbox: Sandbox) -> None:
    session = sandbox.session
    assert session is not None
    result = session.run('echo "unterminated')
    assert result.exit_code == 2 and "unexpected EOF" in result.output
    assert session.run("echo fine").output == "fine\n"


def test_sentinel_is_not_visible_to_commands(sandbox: Sandbox) -> None:
    session = sandbox.session
    assert session is not None
    # Printing the environment, every variable and every command line must not end a call early.
    result = session.run("env; set; cat /proc/*/cmdline | tr '\\0' ' '; echo END")
    assert result.failure is None and result.output.endswith("END\n")


def test_limits_and_network_are_applied(
    client: docker.DockerClient, base_image: str, run_label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CWM_TEST_HOST_SECRET", "must-not-leak")
    config = SandboxConfig(
        image=base_image,
        memory="256m",
        pids_limit=123,
        cpus=0.5,
        env={"ONLY_THIS": "1"},
        labels={f"{LABEL}.run": run_label},
    )
    with Sandbox(config, client) as box:
        attrs = client.api.inspect_container(box.id)
        host = attrs["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["Memory"] == 256 * 2**20
        assert host["PidsLimit"] == 123
        assert host["NanoCpus"] == 500_000_000
        assert host["Privileged"] is False
        assert attrs["Config"]["Labels"][LABEL] == "1"
        session = box.session
        assert session is not None
        assert session.run("ls /sys/class/net").output == "lo\n"
        limits = session.run(
            "cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max "
            "/sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null"
        ).output.split()
        assert limits == ["123", str(256 * 2**20)]
        inside = session.run("env").output
        assert "ONLY_THIS=1" in inside and "must-not-leak" not in inside


def test_missing_image_and_image_without_bash(
    client: docker.DockerClient, no_bash_image: str, run_label: str
) -> None:
    labels = {f"{LABEL}.run": run_label}
    with pytest.raises(ImageNotFoundError, match="not found"):
        Sandbox(SandboxConfig(image="cwm-agent-test/absent:nope", labels=labels), client).start()
    with pytest.raises(NoBashError, match="no bash"):
        Sandbox(SandboxConfig(image=no_bash_image, labels=labels), client).start()
    assert containers_of(client, run_label) == []


def test_copy_in_directory_and_tar_stream(sandbox: Sandbox, tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")
    (tmp_path / "run me.sh").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "run me.sh").chmod(0o755)
    sandbox.copy_in(tmp_path, "/testbed/repo")
    assert sandbox.read_file("/testbed/repo/pkg/mod.py") == b"x = 1\n"
    session = sandbox.session
    assert session is not None
    assert session.run("'/testbed/repo/run me.sh'").output == "hi\n"

    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as tar:
        info = tarfile.TarInfo("streamed.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    stream.seek(0)
    sandbox.copy_in(stream, "/deep/new/dir")
    assert sandbox.read_file("/deep/new/dir/streamed.txt") == b"abc"


def test_write_file_keeps_mode_and_follows_symlinks(sandbox: Sandbox) -> None:
    session = sandbox.session
    assert session is not None
    session.run(
        "printf old > /testbed/tool.sh; chmod 750 /testbed/tool.sh; ln -s tool.sh /testbed/link"
    )
    sandbox.write_file("/testbed/link", b"new")
    assert (
        session.run(
            "stat -c %a /testbed/tool.sh; cat /testbed/tool.sh; test -L /testbed/link && echo L"
        ).output
        == "750\nnewL\n"
    )
    with pytest.raises(FileNotFoundError):
        sandbox.read_file("/testbed/missing")


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from cwm_agent.sandbox import Sandbox, SandboxConfig
    config = SandboxConfig(image=sys.argv[1], labels={"cwm-agent.run": sys.argv[2]})
    try:
        with Sandbox(config) as box:
            print(box.id, flush=True)
            time.sleep(600)
    finally:
        print("unwound", flush=True)
        sys.stdin.readline()  # the test checks the container is gone before we exit
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_killed_process_leaves_no_container(
    client: docker.DockerClient, base_image: str, run_label: str, sig: signal.Signals
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, base_image, run_label],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        preexec_fn=default_signals,
    )
    assert holder.stdout is not None and holder.stdin is not None
    container_id = holder.stdout.readline().strip()
    assert containers_of(client, run_label) == [container_id]
    os.kill(holder.pid, sig)
    if sig != signal.SIGKILL:  # the handler unwinds the `with`: gone while the process lives
        assert holder.stdout.readline() == "unwound\n"
        assert containers_of(client, run_label) == []
        holder.stdin.write("\n")
        holder.stdin.flush()
    holder.wait(timeout=60)
    deadline = time.monotonic() + 60  # SIGKILL: docker removes it once bash sees EOF
    while containers_of(client, run_label) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert containers_of(client, run_label) == []


_CREATING = textwrap.dedent(
    """
    import sys, time
    from cwm_agent.sandbox import Sandbox, SandboxConfig
    box = Sandbox(SandboxConfig(image=sys.argv[1], labels={"cwm-agent.run": sys.argv[2]}))
    print("creating", flush=True)
    with box:
        time.sleep(600)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_the_container_is_created_leaves_none(
    client: docker.DockerClient, base_image: str, sig: signal.Signals
) -> None:
    """The create request is in flight when the signal lands (issue 13.3): whatever it
    made must be gone, also seconds after the process ended."""
    for delay in (0.02, 0.1, 0.3):
        run = f"test-{uuid.uuid4().hex[:10]}"
        holder = subprocess.Popen(
            [sys.executable, "-c", _CREATING, base_image, run],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=Path(__file__).parent.parent,
            start_new_session=True,
            preexec_fn=default_signals,
        )
        assert holder.stdout is not None and holder.stdout.readline() == "creating\n"
        time.sleep(delay)
        holder.send_signal(sig)
        holder.wait(timeout=120)
        time.sleep(3)  # a create the daemon finishes late shows up by now
        left = containers_of(client, run)
        for container in left:
            client.api.remove_container(container, force=True)
        assert left == [], f"{sig.name} {delay}s after the create began left a container"


def test_keepalive_survives_what_root_can_do_inside(sandbox: Sandbox) -> None:
    """`kill -9 -1` and `pkill bash` end the model's processes, not the sandbox (13.9)."""
    assert sandbox.session is not None
    sandbox.session.run("sleep 300 & kill -9 -1")
    sandbox.session.run("pkill -9 bash")
    after = sandbox.session.run("echo alive")
    assert after.output == "alive\n" and after.exit_code == 0
    assert sandbox.client.api.inspect_container(sandbox.id)["State"]["Running"]
    assert sandbox.session.run("pgrep -c sleep").output == "0\n"


def test_disk_watchdog_stops_a_sandbox_that_fills_the_disk(
    client: docker.DockerClient, base_image: str, run_label: str, tmp_path: Path
) -> None:
    """overlay2 on ext4 has no size limit: the watchdog on SizeRw is the bound (13.7)."""
    config = SandboxConfig(
        image=base_image, disk="50m", session_timeout=60, labels={f"{LABEL}.run": run_label}
    )
    replies = tmp_path / "replies.json"
    replies.write_text(
        json.dumps(
            [
                call("bash", "head -c 300m /dev/zero > /tmp/fill; sleep 30"),
                call("bash", "echo never"),
            ]
        )
    )
    with Sandbox(config, client) as box:
        trajectory = run_rollout(
            ReplayPolicy(replies), Toolbox(box), "fill the disk", RolloutConfig(max_turns=5)
        )
    assert trajectory.status == "error"
    assert trajectory.reason is not None
    assert trajectory.reason.startswith("sandbox: DiskLimitExceeded: the sandbox wrote ")
    assert trajectory.reason.endswith("over its limit of 50 MiB: the container was stopped")
    assert trajectory.turns == 1  # stopped in its first call, not after the sleep
    assert containers_of(client, run_label) == []


def test_exception_inside_with_removes_container(
    client: docker.DockerClient, base_image: str, run_label: str
) -> None:
    config = SandboxConfig(image=base_image, labels={f"{LABEL}.run": run_label})
    with pytest.raises(RuntimeError), Sandbox(config, client):
        assert len(containers_of(client, run_label)) == 1
        raise RuntimeError("boom")
    assert containers_of(client, run_label) == []


def test_bash_only_image_runs_session(
    client: docker.DockerClient, bash_only_image: str, run_label: str
) -> None:
    config = SandboxConfig(
        image=bash_only_image, workdir="/scratch", labels={f"{LABEL}.run": run_label}
    )
    with Sandbox(config, client) as box:
        session = box.session
        assert session is not None
        assert (
            session.run("echo $BASH_VERSION > v; read -r v < v; echo ${v%%.*}")
            .output.strip()
            .isdigit()
        )
        assert session.run("python3 --version").exit_code == 127
        assert box.read_file("/scratch/v").startswith(b"5.")
