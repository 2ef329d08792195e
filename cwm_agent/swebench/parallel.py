"""Instances on a thread pool, stopped cleanly by Ctrl-C or SIGTERM.

Every container belongs to a worker thread, and signals arrive in the main
thread: on an interrupt the containers are removed from under the workers
(so they finish at their next step), their late results are dropped, and
the interrupt goes on up.
"""

from __future__ import annotations

import threading
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
    """`work(item, stopping)` for each item; it returns None once `stopping` is set."""
    stopping = threading.Event()
    teardown.install_signal_handlers()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="swebench")
    futures: list[Future[R | None]] = []
    try:
        futures.extend(pool.submit(work, item, stopping) for item in items)
        for future in as_completed(futures):
            result = future.result()
            if result is not None:
                on_result(result)
    except BaseException:
        stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        while not all(future.done() for future in futures):
            teardown.close_all()  # also a container a worker is just starting
            wait(futures, timeout=0.5)
        raise
    finally:
        pool.shutdown(wait=True)
