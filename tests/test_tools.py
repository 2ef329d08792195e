"""The four tools: every message of docs/protocol.md §6, byte for byte.

The pure part (edit matching, snippet bounds, every message) is checked first,
without a container; the Docker tests after it prove that the bytes go through
the archive API and the session as the pure part says."""

from __future__ import annotations

import resource
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from cwm_agent.protocol.prompts import EDIT_TOOL_FORMAT
from cwm_agent.sandbox import LABEL, FileChangedError, FileTooLargeError, Sandbox, SandboxConfig
from cwm_agent.sandbox.patch import tree_patch
from cwm_agent.tools import Toolbox
from cwm_agent.tools.bash import FAILURE_MESSAGES
from cwm_agent.tools.create import CreateCall, created, parse_create, refusal
from cwm_agent.tools.edit import EditCall, apply_edit, edit_bytes, not_edited, parse_edit
from cwm_agent.tools.files import MAX_EDIT_BYTES, MAX_SUBMISSION_BYTES
from cwm_agent.tools.result import ToolResult
from cwm_agent.tools.submit import check_submission, not_submitted

RESTARTED = " A fresh session has started with the current working directory reset to default."


@pytest.fixture(scope="module")
def box(client: docker.DockerClient, base_image: str) -> Iterator[Sandbox]:
    config = SandboxConfig(image=base_image, workdir="/testbed", session_timeout=2)
    with Sandbox(config, client) as sandbox:
        yield sandbox


@pytest.fixture
def tools(box: Sandbox) -> Toolbox:
    """A toolbox whose session sits in a fresh directory of its own."""
    assert box.session is not None
    workdir = f"/testbed/{uuid.uuid4().hex[:8]}"
    box.session.run(f"mkdir -p '{workdir}' && cd '{workdir}'")
    return Toolbox(box)


def put(tools: Toolbox, name: str, data: bytes) -> None:
    tools.files.sandbox.write_file(tools.files.resolve(name), data)


def get(tools: Toolbox, name: str) -> bytes:
    return tools.files.sandbox.read_file(tools.files.resolve(name))


def edit(path: str, search: str, replace: str) -> str:
    return f"{path}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE"


def numbered(first: int, lines: list[str]) -> str:
    """An edit snippet: each line after its number, as the edit tool prints it."""
    return "\n".join(f"{n:6}\t{text}" for n, text in enumerate(lines, start=first))


def edited(path: str, line: int, total: int, snippet: str) -> str:
    return (
        f"File {path} has been successfully updated at line {line} and now contains {total} "
        f"lines. The surrounding lines after the edit are shown below:\n{snippet}\n"
        "Review the changes and make sure they are as expected."
    )


# -- the pure logic, without a container -------------------------------------


def test_bash_failure_messages_are_exact() -> None:
    assert FAILURE_MESSAGES == {
        "terminated": "The current session has terminated unexpectedly." + RESTARTED,
        "timeout": "The current session has terminated due to timeout." + RESTARTED,
        "output": "The current session has terminated because your previous command produced "
        "too much output." + RESTARTED,
    }


def test_parse_edit_takes_the_path_before_exactly_one_block() -> None:
    assert parse_edit(edit(" a b.py ", "x\ny", "")) == EditCall("a b.py", "x\ny", "")
    assert parse_edit("a.py\nreplace f with g") == (
        "Failed to parse the edit tool call. Make sure it has the following format:\n\n"
        + EDIT_TOOL_FORMAT
    )
    two = edit("a.py", "def f():", "def F():") + "\n" + edit("a.py", "def g():", "def G():")
    assert parse_edit(two) == "Only one search/replace block is allowed. Got: 2."


def test_apply_edit_snippet_shows_eight_lines_around_the_replacement() -> None:
    content = "".join(f"line{i}\n" for i in range(1, 21))
    new, message = apply_edit(
        content, EditCall("mod.py", "line10\nline11", "    new10\nnew11\nextra")
    )
    lines = [f"line{i}" for i in range(2, 10)] + ["    new10", "new11", "extra"]
    assert message == edited(
        "mod.py", 10, 22, numbered(2, lines + [f"line{i}" for i in range(12, 20)])
    )
    assert new is not None and new.splitlines()[9:12] == ["    new10", "new11", "extra"]


def test_apply_edit_snippet_stops_at_the_file_bounds() -> None:
    new, message = apply_edit("a\nb\nc", EditCall("f", "a", "A"))
    assert (new, message) == ("A\nb\nc", edited("f", 1, 3, numbered(1, ["A", "b", "c"])))
    new, message = apply_edit("a\nb\nc\n", EditCall("f", "c", ""))
    assert (new, message) == ("a\nb\n\n", edited("f", 3, 4, numbered(1, ["a", "b", "", ""])))


def test_apply_edit_matches_at_line_starts_only_once() -> None:
    content = "def f():\n    return 1\n\ndef g():\n    return 1\n"
    assert apply_edit(content, EditCall("a.py", "    return 1", "    return 2")) == (
        None,
        "No replacement was performed. Multiple occurrences of the search text in lines "
        "[2, 5] of a.py. Please ensure it is unique.",
    )
    assert apply_edit("x\nx\nx\n", EditCall("o", "x\nx", "y"))[1].endswith(  # overlapping
        "in lines [1, 2] of o. Please ensure it is unique."
    )
    assert apply_edit(content, EditCall("a.py", "def h():", "def k():")) == (
        None,
        "No replacement was performed, the search lines did not appear verbatim in a.py.",
    )
    hint = (
        "No replacement was performed, the search lines did not appear verbatim in a.py. "
        "The search lines must exactly match one or more consecutive lines from the file, "
        "with indentations preserved."
    )
    assert apply_edit(content, EditCall("a.py", "return 1\n\ndef g():", "x")) == (None, hint)
    assert apply_edit("prefix_f()\n", EditCall("a.py", "f()", "g()")) == (None, hint)


def test_apply_edit_keeps_crlf_and_the_missing_final_newline() -> None:
    new, _ = apply_edit("première\r\nzweite\r\ndritte", EditCall("w", "zweite", "zweite ✓ 日本"))
    assert new == "première\r\nzweite ✓ 日本\r\ndritte"
    mixed = "a\r\nb\nc\n"  # not all CRLF: matched and written as it is
    assert apply_edit(mixed, EditCall("m", "b", "B"))[0] == "a\r\nB\nc\n"


def test_edit_bytes_keeps_undecodable_bytes_and_shows_them_readable() -> None:
    new, message = edit_bytes(b"caf\xe9\nold\n", EditCall("latin1.txt", "old", "new"))
    assert new == b"caf\xe9\nnew\n"
    assert message == edited("latin1.txt", 2, 3, numbered(1, ["caf\ufffd", "new", ""]))


def test_edit_and_submit_say_why_a_file_was_not_read() -> None:
    large, changed = (
        FileTooLargeError("/w/x", 2**30, MAX_EDIT_BYTES),
        FileChangedError("/w/x", OSError()),
    )
    assert not_edited("x", None) == "The path x does not exist. Please provide a valid path."
    assert not_edited("x", large) == (
        f"The file x is too large for the edit tool ({2**30} bytes, the limit is "
        f"{MAX_EDIT_BYTES}). Use bash to inspect and change it."
    )
    assert not_edited("x", changed) == (
        "The file x changed while it was being read, so it was not edited. "
        "Try again once nothing is writing to it, or use bash."
    )
    assert not_submitted("x", None) == "Failed to submit x. Make sure it exists and is readable."
    assert not_submitted("x", large) == (
        f"Failed to submit x. It is too large ({2**30} bytes, the limit is {MAX_EDIT_BYTES})."
    )
    assert not_submitted("x", changed) == (
        "Failed to submit x. Make sure it exists and is readable. "
        "It changed while it was being read."
    )


def test_create_messages_without_a_container() -> None:
    assert parse_create("  \ncontent") == "Path is empty. Please provide a valid path."
    assert parse_create(" new.py \nprint('x')\n") == CreateCall("new.py", "print('x')\n")
    assert created(CreateCall("new.py", "print('x')\n")) == (
        "File created successfully at: new.py (2 lines)."
    )
    assert (
        created(CreateCall("empty.txt", "")) == "File created successfully at: empty.txt (1 lines)."
    )
    for folder in ["/proc", "/dev", "/sys/kernel"]:
        assert refusal(folder) == (
            f"File creation failed. {folder} is in a virtual file system (/proc, /dev, /sys), "
            "where the tool cannot create files."
        )
    assert refusal("/develop") is None and refusal("/testbed/proc") is None


def test_submission_checks_without_a_container() -> None:
    assert check_submission("e", "\n  \n", "patch") == ToolResult(
        "Failed to submit e. It is an empty file.", ok=False
    )
    assert check_submission("n", "some notes\n", "patch") == ToolResult(
        "Failed to submit n. It is not a valid diff file.", ok=False
    )
    patch = "diff --git a/x b/x\n+caf\udce9\n"  # an undecodable byte, kept as a surrogate
    accepted = check_submission("p", patch, "patch")
    assert accepted.ok and accepted.submission == patch
    assert accepted.output == (
        "The following patch content is marked as your final submission:\n\n"
        "<submission>\ndiff --git a/x b/x\n+caf\ufffd\n\n</submission>\n\n"
        "Review the patch content and ensure it correctly resolves the issue. If necessary, "
        "you can continue refining the patch and submit an updated version."
    )
    test = check_submission("t", "print('Issue reproduced')\n", "test")
    assert test == ToolResult(
        "Review the following test which is marked as a submission:\n\n"
        "<submission>\nprint('Issue reproduced')\n\n</submission>",
        ok=True,
        submission="print('Issue reproduced')\n",
    )


# -- bash ------------------------------------------------------------------


@pytest.mark.docker
def test_bash_output_is_verbatim_and_failures_are_exact(tools: Toolbox) -> None:
    ok = tools.run("bash", "echo hi; ls missing-file")
    assert ok.ok and ok.exit_code == 2
    assert ok.output == "hi\nls: cannot access 'missing-file': No such file or directory\n"
    assert tools.run("bash", "sleep 10").output == (
        "The current session has terminated due to timeout." + RESTARTED
    )
    assert tools.run("bash", "exit").output == (
        "The current session has terminated unexpectedly." + RESTARTED
    )
    flood = tools.run("bash", "yes")
    assert not flood.ok
    assert flood.output == (
        "The current session has terminated because your previous command produced too much "
        "output." + RESTARTED
    )
    assert tools.run("bash", "pwd").output == "/testbed\n"


# -- edit ------------------------------------------------------------------


@pytest.mark.docker
def test_edit_success_message_and_snippet(tools: Toolbox) -> None:
    put(tools, "mod.py", "".join(f"line{i}\n" for i in range(1, 21)).encode())
    result = tools.run("edit", edit("mod.py", "line10\nline11", "    new10\nnew11\nextra"))
    assert result.ok
    snippet = "\n".join(
        f"{n:6}\t{text}"
        for n, text in zip(
            range(2, 21),
            [f"line{i}" for i in range(2, 10)]
            + ["    new10", "new11", "extra"]
            + [f"line{i}" for i in range(12, 20)],
            strict=True,
        )
    )
    assert result.output == (
        "File mod.py has been successfully updated at line 10 and now contains 22 lines. "
        f"The surrounding lines after the edit are shown below:\n{snippet}\n"
        "Review the changes and make sure they are as expected.\n"
    )
    assert get(tools, "mod.py").decode().splitlines()[9:12] == ["    new10", "new11", "extra"]


@pytest.mark.docker
def test_edit_failures(tools: Toolbox) -> None:
    put(tools, "a.py", b"def f():\n    return 1\n\ndef g():\n    return 1\n")
    assert tools.run("edit", edit("nope.py", "x", "y")).output == (
        "The path nope.py does not exist. Please provide a valid path.\n"
    )
    assert tools.run("edit", edit("a.py", "    return 1", "    return 2")).output == (
        "No replacement was performed. Multiple occurrences of the search text in lines "
        "[2, 5] of a.py. Please ensure it is unique.\n"
    )
    assert tools.run("edit", edit("a.py", "def h():", "def k():")).output == (
        "No replacement was performed, the search lines did not appear verbatim in a.py.\n"
    )
    assert tools.run("edit", edit("a.py", "return 1\n\ndef g():", "x")).output == (
        "No replacement was performed, the search lines did not appear verbatim in a.py. "
        "The search lines must exactly match one or more consecutive lines from the file, "
        "with indentations preserved.\n"
    )
    assert tools.run("edit", "a.py\nreplace f with g").output == (
        "Failed to parse the edit tool call. Make sure it has the following format:\n\n"
        + EDIT_TOOL_FORMAT
        + "\n"
    )
    two = edit("a.py", "def f():", "def F():") + "\n" + edit("a.py", "def g():", "def G():")
    assert tools.run("edit", two).output == "Only one search/replace block is allowed. Got: 2.\n"
    assert get(tools, "a.py") == b"def f():\n    return 1\n\ndef g():\n    return 1\n"


@pytest.mark.docker
def test_edit_keeps_crlf_missing_final_newline_and_unicode(tools: Toolbox) -> None:
    put(tools, "win.txt", "première\r\nzweite\r\ndritte".encode())
    result = tools.run("edit", edit("win.txt", "zweite", "zweite ✓ 日本"))
    assert result.ok, result.output
    assert get(tools, "win.txt") == "première\r\nzweite ✓ 日本\r\ndritte".encode()
    put(tools, "latin1.txt", b"caf\xe9\nold\n")
    assert tools.run("edit", edit("latin1.txt", "old", "new")).ok
    assert get(tools, "latin1.txt") == b"caf\xe9\nnew\n"  # undecodable bytes survive


@pytest.mark.docker
def test_edit_paths_relative_to_session_with_spaces(tools: Toolbox) -> None:
    tools.run("bash", "mkdir -p 'sub dir' && cd 'sub dir'")
    put(tools, "my file.txt", b"alpha\n")
    assert tools.run("edit", edit("my file.txt", "alpha", "beta")).ok
    assert tools.run("bash", "cat 'my file.txt'").output == "beta\n"


# -- create ----------------------------------------------------------------


@pytest.mark.docker
def test_create_messages(tools: Toolbox) -> None:
    cwd = tools.run("bash", "pwd").output.strip()
    assert tools.run("create", "new.py\nprint('x')\n").output == (
        "File created successfully at: new.py (2 lines).\n"
    )
    assert get(tools, "new.py") == b"print('x')\n"
    assert tools.run("create", "empty.txt").output == (
        "File created successfully at: empty.txt (1 lines).\n"
    )
    assert get(tools, "empty.txt") == b""
    assert tools.run("create", "new.py\nagain").output == (
        "new.py already exists. Cannot create a new file at an existing path.\n"
    )
    assert tools.run("create", "  \ncontent").output == (
        "Path is empty. Please provide a valid path.\n"
    )
    assert tools.run("create", "no/such/dir/f.py\nx").output == (
        f"File creation failed. The parent directory {cwd}/no/such/dir does not exist.\n"
    )
    assert tools.run("bash", "stat -c %a new.py").output == "644\n"


# -- submit ----------------------------------------------------------------


@pytest.mark.docker
def test_submit_messages(tools: Toolbox) -> None:
    assert tools.run("submit", "missing.diff").output == (
        "Failed to submit missing.diff. Make sure it exists and is readable."
    )
    put(tools, "empty.diff", b"\n  \n")
    assert tools.run("submit", "empty.diff").output == (
        "Failed to submit empty.diff. It is an empty file."
    )
    put(tools, "notes.txt", b"some notes\n")
    assert tools.run("submit", "notes.txt").output == (
        "Failed to submit notes.txt. It is not a valid diff file."
    )
    patch = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"
    put(tools, "fix.patch", patch.encode())
    result = tools.run("submit", " fix.patch\n")
    assert result.ok and result.submission == patch
    assert result.output == (
        "The following patch content is marked as your final submission:\n\n"
        f"<submission>\n{patch}\n</submission>\n\n"
        "Review the patch content and ensure it correctly resolves the issue. If necessary, "
        "you can continue refining the patch and submit an updated version."
    )
    tests = Toolbox(tools.files.sandbox, submit_kind="test")
    put(tools, "test_issue.py", b"print('Issue reproduced')\n")
    submitted = tests.run("submit", "test_issue.py")
    assert submitted.submission == "print('Issue reproduced')\n"
    assert submitted.output == (
        "Review the following test which is marked as a submission:\n\n"
        "<submission>\nprint('Issue reproduced')\n\n</submission>"
    )


# -- what a hostile or careless model can do to the host ------------------------


@pytest.mark.docker
def test_file_tools_refuse_files_above_their_bound(tools: Toolbox) -> None:
    """A 1 GiB sparse file costs nothing inside; the host must not load it (issue 13.2)."""
    tools.run("bash", "truncate -s 1G huge.log && head -c 3M /dev/zero | tr '\\0' x > big.diff")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    assert tools.run("edit", edit("huge.log", "a", "b")).output == (
        f"The file huge.log is too large for the edit tool ({2**30} bytes, the limit is "
        f"{MAX_EDIT_BYTES}). Use bash to inspect and change it.\n"
    )
    assert tools.run("submit", "big.diff").output == (
        f"Failed to submit big.diff. It is too large ({3 * 2**20} bytes, the limit is "
        f"{MAX_SUBMISSION_BYTES})."
    )
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mib < 64, f"the host process grew by {grown_mib:.0f} MiB"


@pytest.mark.docker
def test_a_file_changing_while_it_is_read_fails_the_call_not_the_run(tools: Toolbox) -> None:
    """Reads racing a writer that truncates and refills the file (issue 13.1)."""
    tools.run(
        "bash",
        "setsid nohup timeout 60 bash -c 'while :; do head -c 2000000 /dev/zero > app.log; "
        ": > app.log; done' >/dev/null 2>&1 &",
    )
    time.sleep(0.5)
    outputs = [tools.run("edit", edit("app.log", "x", "y")).output for _ in range(30)]
    tools.run("bash", "pkill -f 'head -c 2000000' ; pkill -f 'while :'")
    changed = "The file app.log changed while it was being read, so it was not edited."
    assert any(out.startswith(changed) for out in outputs), outputs[:3]
    assert all(
        out.startswith((changed, "No replacement was performed", "The path app.log"))
        for out in outputs
    )


@pytest.mark.docker
def test_create_refuses_kernel_file_systems(tools: Toolbox) -> None:
    """A file "created" under /proc, /dev or /sys would be invisible inside (issue 13.16)."""
    tools.run("bash", "ln -s /dev dev-link")
    for path, parent in [
        ("/proc/note", "/proc"),
        ("/dev/note", "/dev"),
        ("/sys/kernel/note", "/sys/kernel"),
        ("dev-link/note", "/dev"),
    ]:
        assert tools.run("create", f"{path}\nhello").output == (
            f"File creation failed. {parent} is in a virtual file system (/proc, /dev, /sys), "
            "where the tool cannot create files.\n"
        )
    assert tools.run("create", "visible.txt\nhello").output.startswith("File created")


# -- an image with bash and nothing else ------------------------------------


@pytest.mark.docker
def test_tools_work_without_python_or_coreutils(
    client: docker.DockerClient, bash_only_image: str, run_label: str
) -> None:
    config = SandboxConfig(image=bash_only_image, workdir="/w", labels={f"{LABEL}.run": run_label})
    with Sandbox(config, client) as sandbox:
        tools = Toolbox(sandbox)
        assert tools.run("create", "f.txt\nhello\nworld").ok
        assert tools.run("edit", edit("f.txt", "world", "there")).ok
        assert tools.run("bash", 'echo "<$(<f.txt)>"').output == "<hello\nthere>\n"
        assert tools.run("bash", "python3 -V").exit_code == 127


# -- patch helper ------------------------------------------------------------


@pytest.mark.docker
def test_tree_patch_applies_with_new_and_binary_files(
    client: docker.DockerClient, base_image: str, run_label: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "logo.bin").write_bytes(bytes(range(256)))
    (repo / ".gitignore").write_text("*.log\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "start"], check=True)

    config = SandboxConfig(image=base_image, workdir="/testbed", labels={f"{LABEL}.run": run_label})
    with Sandbox(config, client) as sandbox:
        sandbox.copy_in(repo, "/testbed")
        tools = Toolbox(sandbox)
        assert tools.run("edit", edit("calc.py", "    return a - b", "    return a + b")).ok
        assert tools.run("create", "docs dir/new file.md\n# hi\n").output.startswith(
            "File creation"
        )
        tools.run("bash", "mkdir 'docs dir'")
        assert tools.run("create", "docs dir/new file.md\n# hi\n").ok
        tools.run(
            "bash", "printf '\\x00\\x01\\x02' > logo.bin; echo noise > run.log; git add calc.py"
        )
        patch = tree_patch(sandbox, "/testbed")
        staged = tools.run("bash", "git diff --cached --name-only").output
    assert sorted(patch.files) == ["calc.py", "docs dir/new file.md", "logo.bin"]
    assert patch.binary_files == ["logo.bin"]
    assert staged == "calc.py\n", "the agent's own index must be left as it was"

    (tmp_path / "fix.patch").write_bytes(patch.encode())
    subprocess.run([*git, "apply", str(tmp_path / "fix.patch")], check=True)
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert (repo / "docs dir" / "new file.md").read_text() == "# hi\n"
    assert (repo / "logo.bin").read_bytes() == b"\x00\x01\x02"
