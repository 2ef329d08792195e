"""Ground-truth execution traces with `sys.settrace`: this file runs INSIDE the sandbox.

It is shipped into the container as is and run by the image's own Python (3.8 to
3.12), so it imports only the standard library and uses no newer syntax. One job (a
JSON object on stdin) runs in this process; `--batch FILE` runs each job of a JSON
list in its own child process with a timeout, a memory limit and its own process
group, so code that loops forever, forks or eats memory is stopped and cannot
disturb the next job.

A trace holds the events of the entry function and of every function, lambda or
comprehension of the same source it calls: `call` (locals are the arguments), `line`
(locals before the line runs, then the line), `return` (the value) and `exception`
(the exception). Locals are reprs, each cut to what the trace still has room for (so
one huge value cannot make the host carry it); a value whose repr is unchanged since the
previous call/line frame of the same frame is written `".."`, and that base is
dropped as soon as another frame's event comes in between (as CWM's release demo
resolves them). The trace ends when the entry function returns; it is cut (status
`lines` or `bytes`) past `max_lines` line events or `max_bytes` of frame text, the
limits the CWM paper filtered its traces by. The return value's repr is cut at
`max_bytes` too.

A job's result goes back on a pipe of its own (`--job FD`), as `KEY LENGTH\n` then the
JSON, KEY a random one per job; the process then ends at once (`os._exit`: no exit
handler of the traced code runs). What the traced code prints, or writes to any
descriptor without knowing KEY, cannot pass for its result.
"""

import contextlib
import json
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time

FILENAME = "<cwm-trace>"
UNCHANGED = ".."
CUT = "...<cut>"  # ends a repr cut to fit the trace's bytes
HEADER_MAX = 64  # `KEY LENGTH\n`: a longer first line is not the tracer's
DEFAULTS = {"max_lines": 10000, "max_bytes": 1000000, "max_frames": 0, "memory_mb": 1024}


class _Stop(BaseException):
    """Raised into the traced code to end it once the trace is complete or cut."""


def safe_repr(value, limit):
    """repr(value), at most `limit` characters (and CUT) long."""
    try:
        text = repr(value)
    except BaseException as exc:  # a user __repr__ may raise anything
        text = f"<repr failed: {type(exc).__name__}>"
    return cut(text, limit)


def cut(text, limit):
    return text if len(text) <= limit else text[: max(limit, 0)] + CUT


class Tracer:
    def __init__(self, lines, max_lines, max_bytes, max_frames):
        self.lines = lines
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self.frames = []
        self.line_events = 0
        self.size = 0
        self.status = None  # set when the trace ends: ok, lines, bytes
        self.entry = None
        self.depth = 0
        self.base = None  # (frame, reprs) the next frame of `frame` is diffed against

    def source_line(self, frame):
        number = frame.f_lineno
        return self.lines[number - 1] if 0 < number <= len(self.lines) else ""

    def emit(self, frame, event, record):
        if self.status is not None:
            raise _Stop()
        record.update(event=event, lineno=frame.f_lineno, line=self.source_line(frame))
        record.update(function=frame.f_code.co_name, depth=self.depth)
        self.frames.append(record)
        self.size += len(json.dumps(record.get("locals", record.get("value")))) + len(
            record["line"].encode("utf-8")
        )
        if event == "line":
            self.line_events += 1
        if self.line_events > self.max_lines:
            self.status = "lines"
        elif self.size > self.max_bytes:
            self.status = "bytes"
        elif self.max_frames and len(self.frames) >= self.max_frames:
            self.status = "ok"
        if self.status is not None:
            raise _Stop()

    def room(self):
        """Characters a value may still take: past them the trace is cut anyway."""
        return self.max_bytes - self.size + 1

    def observe(self, frame, event):
        reprs = {}
        room = self.room()
        for name, value in frame.f_locals.items():
            if not name.startswith("."):  # `.0`: a comprehension's hidden iterator
                reprs[name] = safe_repr(value, room)
                room -= len(reprs[name])
        shown = reprs
        if self.base is not None and self.base[0] is frame:
            old = self.base[1]
            shown = {k: UNCHANGED if old.get(k) == v else v for k, v in reprs.items()}
        self.base = (frame, reprs)
        self.emit(frame, event, {"locals": shown})

    def on_call(self, frame, event, arg):
        if event != "call" or frame.f_code.co_filename != FILENAME:
            return None
        if self.entry is None:
            self.entry = frame
        self.depth += 1
        self.observe(frame, "call")
        return self.on_event

    def on_event(self, frame, event, arg):
        if event == "line":
            self.observe(frame, "line")
        elif event == "exception":
            self.drop_base(frame)
            self.emit(frame, "exception", {"value": safe_repr(arg[1], self.room())})
        elif event == "return":
            self.base = None
            self.emit(frame, "return", {"value": safe_repr(arg, self.room())})
            self.depth -= 1
            if frame is self.entry:
                self.status = "ok"
                sys.settrace(None)
        return self.on_event

    def drop_base(self, frame):
        if self.base is not None and self.base[0] is not frame:
            self.base = None


def run_job(job):
    """Trace `function(args)` of `source`; the module body itself runs untraced."""
    settings = dict(DEFAULTS, **job)
    source = settings["source"]
    namespace = {"__name__": "__cwm_trace__"}
    try:
        exec(compile(source, FILENAME, "exec"), namespace)
        function = namespace[settings["function"]]
        call = "(lambda *args, **kwargs: (args, kwargs))({})".format(settings["args"])
        args, kwargs = eval(compile(call, "<cwm-args>", "eval"), namespace)
    except BaseException as exc:
        error = cut(f"{type(exc).__name__}: {exc}", settings["max_bytes"])
        return {"status": "error", "error": error, "frames": []}
    tracer = Tracer(
        source.splitlines(),
        settings["max_lines"],
        settings["max_bytes"],
        settings["max_frames"],
    )
    output = None
    raised = None
    sys.settrace(tracer.on_call)
    try:
        output = safe_repr(function(*args, **kwargs), settings["max_bytes"])
    except _Stop:
        pass
    except BaseException as exc:
        raised = cut(f"{type(exc).__name__}: {exc}", settings["max_bytes"])
    finally:
        sys.settrace(None)
    result = {"status": tracer.status or "ok", "frames": tracer.frames, "output": output}
    if raised is not None:
        result["raised"] = raised
    return result


def run_child(job, timeout):
    """One job in a child process of its own group; the whole group dies on timeout.
    Its result comes on a pipe of its own, under a key made for this job only."""
    deadline = time.monotonic() + timeout
    key = os.urandom(16).hex()
    reader, writer = os.pipe()
    try:
        child = start(writer, deadline)
    except OSError as exc:
        os.close(reader)
        return {"status": "error", "error": f"cannot start the job: {exc}", "frames": []}
    finally:
        os.close(writer)
    try:
        with contextlib.suppress(BrokenPipeError):  # it died first: told below
            child.stdin.write(json.dumps(dict(job, key=key)).encode("utf-8"))
            child.stdin.close()
        outcome, payload = receive(reader, key, deadline)
        if outcome == "closed":  # no result: wait for the exit code
            child.wait(max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        outcome = "timeout"
    finally:
        os.close(reader)
        with contextlib.suppress(OSError):
            os.killpg(child.pid, signal.SIGKILL)  # the job's leftovers, or all of it on timeout
        child.wait()
    if outcome == "timeout":
        return {"status": "timeout", "error": f"no result after {timeout:g} s", "frames": []}
    if outcome == "forged":
        why = "the traced code wrote into the tracer's result channel"
        return {"status": "error", "error": why, "frames": []}
    if outcome == "closed":
        why = f"the tracer died (exit code {child.returncode})"
        return {"status": "error", "error": why, "frames": []}
    return json.loads(payload.decode("utf-8"))


def start(channel, deadline):
    """The job's process. While another job's leftovers fill the container's process
    limit (fork fails with EAGAIN), it waits for room until its own deadline."""
    while True:
        try:
            return subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--job", str(channel)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(channel,),
                start_new_session=True,
            )
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def receive(reader, key, deadline):
    """(outcome, payload) from a job's result pipe: ok with the JSON, closed (no result),
    forged (bytes not from the tracer came first) or timeout."""
    data = b""
    size = None  # of the whole message, once its header is in
    while size is None or len(data) < size:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([reader], [], [], left)[0]:
            return "timeout", None
        chunk = os.read(reader, 1 << 20)
        if not chunk:
            return "closed", None
        data += chunk
        if size is None:
            head, newline, _ = data[:HEADER_MAX].partition(b"\n")
            if newline:
                name, _, length = head.decode("ascii", "replace").partition(" ")
                if name != key or not length.isdigit():
                    return "forged", None
                size = len(head) + 1 + int(length)
            elif len(data) >= HEADER_MAX:
                return "forged", None
    return "ok", data[len(head) + 1 : size]


def send(fd, key, result):
    payload = json.dumps(result).encode("utf-8")
    with os.fdopen(fd, "wb") as channel:
        channel.write(f"{key} {len(payload)}\n".encode("ascii") + payload)


def run_batch(path, timeout, workers):
    with open(path, encoding="utf-8") as handle:
        jobs = json.load(handle)
    results = [None] * len(jobs)
    lock = threading.Lock()
    pending = list(range(len(jobs)))

    def work():
        while True:
            with lock:
                if not pending:
                    return
                index = pending.pop(0)
            results[index] = run_child(jobs[index], timeout)

    threads = [threading.Thread(target=work) for _ in range(max(1, workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        sys.stdout.write(json.dumps(result) + "\n")


def main():
    if sys.argv[1] == "--batch":
        run_batch(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
        return
    channel = int(sys.argv[2])  # --job FD
    os.set_inheritable(channel, False)  # programs the traced code runs do not get it
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    key = job.pop("key")
    limit = int(job.get("memory_mb", DEFAULTS["memory_mb"])) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # The traced code's prints go nowhere; the file stays open for the job's whole life.
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 3000))
    job_pid = os.getpid()
    try:
        result = run_job(job)
    except MemoryError:
        result = {"status": "error", "error": "MemoryError: out of memory", "frames": []}
    if os.getpid() == job_pid:  # not a fork of the traced code that returned too
        send(channel, key, result)
    os._exit(0)  # no exit handler, thread or finalizer of the traced code runs after


if __name__ == "__main__":
    main()
