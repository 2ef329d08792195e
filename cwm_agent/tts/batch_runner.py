"""Runs a batch of generated tests in one interpreter, each in its own process.

Copied into the container and run there as `python batch_runner.py SPEC RESULTS`
(so it keeps to Python 3.6 syntax and the standard library: SWE-bench images
carry old Pythons). The parent imports what the tests import first, once;
each test then runs in a forked child, exactly as `python test_issue.py` would
run it in the repository root: its own output file, its own timeout, its own
process group (killed when the test ends), a clean tree afterwards. Whatever
a test does to the interpreter — monkeypatching, `os._exit`, a segfault, a
hang — ends with its child. A test the host marked `fork: false` (it imports
late what the parent preloaded) runs in a fresh interpreter instead.

The results are written once, at the end, by the parent: a test cannot
overwrite them, and a runner killed half-way leaves none, so the host falls
back to running every test alone.
"""

import base64
import builtins
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import types


def preload(modules, workdir):
    """Import what the tests import first, quietly; a failure is the test's to meet."""
    sys.path[0] = workdir
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1), os.dup(2)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        for name in modules:
            with contextlib.suppress(BaseException):  # SystemExit too: the test meets it itself
                importlib.import_module(name)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(devnull)


def child(path, log, workdir):
    """In the forked child: become `python test_issue.py` and never return to the loop."""
    os.setpgid(0, 0)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.closerange(3, 1024)
    os.chdir(workdir)
    sys.argv = [os.path.basename(path)]
    sys.path[0] = workdir
    main = types.ModuleType("__main__")
    # Since 3.9 a script's __file__ is absolute; before, it was as typed.
    main.__file__ = path if sys.version_info >= (3, 9) else sys.argv[0]
    main.__builtins__ = builtins
    main.__spec__ = main.__package__ = main.__loader__ = None
    sys.modules["__main__"] = main
    try:
        with open(path, "rb") as script:
            code = compile(script.read(), main.__file__, "exec")
        exec(code, main.__dict__)
    except SystemExit:
        raise
    except BaseException:  # as the interpreter would: print it, exit 1
        traceback.print_exc()
        sys.exit(1)
    sys.exit(0)  # unwinds to the top: threads joined, atexit run, output flushed


def wait(pid, timeout):
    """The child's exit code, or None when it ran out of time (then it is killed)."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() >= deadline:
            kill_group(pid)
            os.waitpid(pid, 0)
            return None
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    kill_group(pid)  # whatever it started in the background ends with it
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def kill_group(pid):
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def alone(path, log, workdir, timeout):
    """A fresh interpreter, as before batching."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, os.path.basename(path)],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            kill_group(process.pid)
            process.wait()


def tail(log, limit):
    try:
        with open(log, "rb") as found:
            found.seek(0, os.SEEK_END)
            found.seek(max(0, found.tell() - limit))
            return found.read().decode("utf-8", "replace")
    except OSError:
        return ""


def main():
    spec_path, results_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as spec_file:
        spec = json.load(spec_file)
    workdir, limit = spec["workdir"], spec["output_limit"]
    path = os.path.join(workdir, spec["test_file"])
    log = results_path + ".log"
    preload(spec["preload"], workdir)
    results = []
    for test in spec["tests"]:
        with open(path, "wb") as out:
            out.write(base64.b64decode(test["source"]))
        started = time.monotonic()
        sys.stdout.flush()
        sys.stderr.flush()
        if test["fork"]:
            pid = os.fork()
            if pid == 0:
                child(path, log, workdir)
            code = wait(pid, test["timeout"])
        else:
            code = alone(path, log, workdir, test["timeout"])
        duration = time.monotonic() - started
        results.append(
            {
                "id": test["id"],
                "exit_code": code,
                "output": tail(log, limit),
                "duration_s": duration,
            }
        )
        subprocess.call(["bash", "-c", spec["reset"]], cwd=workdir)
    os.unlink(log)
    partial = results_path + ".partial"
    with open(partial, "w") as out:
        json.dump(results, out)
    os.rename(partial, results_path)


if __name__ == "__main__":
    main()
