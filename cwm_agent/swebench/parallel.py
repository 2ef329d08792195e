"""Instances on a thread pool, stopped cleanly by Ctrl-C or SIGTERM.

Every container belongs to a worker thread, and signals arrive in the main
thread: on an interrupt the containers are removed from under the workers
(so they finish at their next step), their late results are dropped, and
the interrupt goes on up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from typing import TypeVar

from cwm_agent.sandbox import teardown

T = TypeVar("T")
R = TypeVar("R")


def run_parallel(
    items: Iterable[T],
    work: Callable[[T, threading.Event], R | None],
    workers: int,
    on_result: Callable[[R], None],
) -> None:
    """`work(item, stopping)` for each item; it returns None once `stopping` is set.

    Work in progress is counted, not found through its future: an interrupt can
    land inside `submit` after a worker took the item but before the future came
    back, and that worker must be stopped too.
    """
    stopping = threading.Event()
    lock = threading.Lock()
    running = 0

    def guarded(item: T) -> R | None:
        nonlocal running
        with lock:
            if stopping.is_set():
                return None
            running += 1
        try:
            return work(item, stopping)
        finally:
            with lock:
                running -= 1

    teardown.install_signal_handlers()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="swebench")
    futures: list[Future[R | None]] = []
    try:
        futures.extend(pool.submit(guarded, item) for item in items)
        for future in as_completed(futures):
            result = future.result()
            if result is not None:
                on_result(result)
    except BaseException:
        with lock:
            stopping.set()  # from here on no work starts
        pool.shutdown(wait=False, cancel_futures=True)
        while running or not all(future.done() for future in futures):
            teardown.close_all()  # also a container a worker is just starting
            if not wait(futures, timeout=0.5).not_done:  # only uncounted work is left
                time.sleep(0.1)
        raise
    finally:
        pool.shutdown(wait=True)
