"""Process-wide guarantee that sandboxes are removed on exit and on signals.

SIGTERM and SIGHUP raise `SandboxInterrupted` in the main thread, so `with`
blocks unwind exactly as they do for Ctrl-C; `atexit` removes whatever is
still registered (e.g. a sandbox created outside a `with`).
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import threading
from typing import Protocol

from cwm_agent.sandbox.errors import SandboxInterrupted


class _Closable(Protocol):
    def close(self) -> None: ...


_live: set[_Closable] = set()
_lock = threading.Lock()
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


atexit.register(close_all)


def _interrupt(signum: int, frame: object) -> None:
    raise SandboxInterrupted(f"received signal {signal.Signals(signum).name}")
