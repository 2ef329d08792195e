"""`ast.parse` that many threads may call at once.

CPython 3.11 keeps the AST constructor's recursion depth in state shared by every
thread, so two parses that interleave can fail with `SystemError: AST constructor
recursion depth mismatch` (python/cpython#106905). Candidates are tested in threads
of their own, so every parse of user or model code goes through one lock.
"""

from __future__ import annotations

import ast
import threading

_lock = threading.Lock()


def parse(source: str) -> ast.Module:
    """`ast.parse(source)`, one thread at a time; raises SyntaxError as it does."""
    with _lock:
        return ast.parse(source)
