"""Process-wide guarantee that sandboxes are removed on exit and on signals.

SIGTERM and SIGHUP raise `SandboxInterrupted` in the main thread, so `with`
blocks unwind exactly as they do for Ctrl-C; `atexit` removes whatever is
still registered (e.g. a sandbox created outside a `with`).

A sandbox closed while Docker is still creating its container does not wait
for the daemon (a loaded one takes half a minute and more): the container is
removed once it is made, by this process, or, where it exits first, by a
reaper process it leaves behind (`reaper.py`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from cwm_agent.sandbox.errors import SandboxInterrupted


class _Closable(Protocol):
    def close(self) -> None: ...


_live: set[_Closable] = set()
_unmade: set[Future[Any]] = set()  # creates whose sandbox closed before they answered
_lock = threading.Lock()
_made = threading.Condition(_lock)  # notified as each of `_unmade` is made and removed
_signals_installed = False


def register(sandbox: _Closable) -> None:
    """Track a sandbox; the signal handlers go in with the first one registered from
    the main thread (Python only lets the main thread install them)."""
    with _lock:
        _live.add(sandbox)
    install_signal_handlers()


def install_signal_handlers() -> None:
    """Make SIGTERM/SIGHUP unwind like Ctrl-C; a no-op outside the main thread, so
    code that opens sandboxes from worker threads calls it first from the main one."""
    global _signals_installed
    with _lock:
        if not _signals_installed and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) in (signal.SIG_DFL, None):
                    signal.signal(sig, _interrupt)
            _signals_installed = True


def unregister(sandbox: _Closable) -> None:
    with _lock:
        _live.discard(sandbox)


def close_all() -> None:
    """Close every live sandbox at once: one slow removal must not leave the others
    running their rollouts meanwhile."""
    with _lock:
        live = list(_live)
    closers = [threading.Thread(target=_close, args=(sandbox,), daemon=True) for sandbox in live]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join()


def _close(sandbox: _Closable) -> None:
    with contextlib.suppress(Exception):  # best effort; the keep-alive guard still applies
        sandbox.close()


def remove_when_made(pending: Future[dict[str, str]], remove: Callable[[str], None]) -> None:
    """`remove(id)` of the container a create request in flight makes, once it answers."""
    with _lock:
        _unmade.add(pending)

    def made(done: Future[dict[str, str]]) -> None:
        try:
            if done.exception() is None:
                with contextlib.suppress(Exception):  # gone already, or the daemon is
                    remove(done.result()["Id"])
        finally:
            with _made:
                _unmade.discard(done)
                _made.notify_all()

    pending.add_done_callback(made)


def settle(timeout: float) -> int:
    """Wait up to `timeout` for the creates of closed sandboxes to be made and removed
    (one the daemon already made answers at once); the number still in flight."""
    with _made:
        _made.wait_for(lambda: not _unmade, timeout)
        return len(_unmade)


def _leave_a_reaper() -> None:
    """At exit, with creates still in flight: a process of its own removes what they make."""
    with _lock:
        count = len(_unmade)
    if count:
        with contextlib.suppress(OSError):
            subprocess.Popen(
                [sys.executable, "-m", "cwm_agent.sandbox.reaper", str(os.getpid()), str(count)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )


atexit.register(_leave_a_reaper)  # atexit runs last-registered first: after close_all
atexit.register(close_all)


def _interrupt(signum: int, frame: object) -> None:
    raise SandboxInterrupted(f"received signal {signal.Signals(signum).name}")
