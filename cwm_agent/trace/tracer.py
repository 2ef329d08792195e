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
(the exception). Locals are reprs; a value whose repr is unchanged since the
previous call/line frame of the same frame is written `".."`, and that base is
dropped as soon as another frame's event comes in between (as CWM's release demo
resolves them). The trace ends when the entry function returns; it is cut (status
`lines` or `bytes`) past `max_lines` line events or `max_bytes` of frame text, the
limits the CWM paper filtered its traces by.
"""

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading

FILENAME = "<cwm-trace>"
UNCHANGED = ".."
RESULT_MARKER = "\x00cwm-trace-result\x00"
DEFAULTS = {"max_lines": 10000, "max_bytes": 1000000, "max_frames": 0, "memory_mb": 1024}


class _Stop(BaseException):
    """Raised into the traced code to end it once the trace is complete or cut."""


def safe_repr(value):
    try:
        return repr(value)
    except BaseException as exc:  # a user __repr__ may raise anything
        return f"<repr failed: {type(exc).__name__}>"


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

    def observe(self, frame, event):
        reprs = {}
        for name, value in frame.f_locals.items():
            if not name.startswith("."):  # `.0`: a comprehension's hidden iterator
                reprs[name] = safe_repr(value)
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
            self.emit(frame, "exception", {"value": safe_repr(arg[1])})
        elif event == "return":
            self.base = None
            self.emit(frame, "return", {"value": safe_repr(arg)})
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
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}", "frames": []}
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
        output = safe_repr(function(*args, **kwargs))
    except _Stop:
        pass
    except BaseException as exc:
        raised = f"{type(exc).__name__}: {exc}"
    finally:
        sys.settrace(None)
    result = {"status": tracer.status or "ok", "frames": tracer.frames, "output": output}
    if raised is not None:
        result["raised"] = raised
    return result


def run_child(job, timeout):
    """One job in a child process of its own group; the whole group dies on timeout."""
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, _ = child.communicate(json.dumps(job).encode("utf-8"), timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return {"status": "timeout", "error": f"no result after {timeout:g} s", "frames": []}
    finally:
        with contextlib.suppress(OSError):
            os.killpg(child.pid, signal.SIGKILL)  # forked leftovers of a finished job
    text = out.decode("utf-8", "replace")
    if RESULT_MARKER not in text:
        return {
            "status": "error",
            "error": f"the tracer died (exit code {child.returncode})",
            "frames": [],
        }
    return json.loads(text.rsplit(RESULT_MARKER, 1)[1])


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
    if len(sys.argv) > 1 and sys.argv[1] == "--batch":
        run_batch(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
        return
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    limit = int(job.get("memory_mb", DEFAULTS["memory_mb"])) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    real_stdout = os.fdopen(os.dup(1), "w", encoding="utf-8")
    # The traced code's prints go nowhere; the file stays open for the job's whole life.
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 3000))
    try:
        result = run_job(job)
    except MemoryError:
        result = {"status": "error", "error": "MemoryError: out of memory", "frames": []}
    real_stdout.write(RESULT_MARKER + json.dumps(result))
    real_stdout.flush()


if __name__ == "__main__":
    main()
