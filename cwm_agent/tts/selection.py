"""Choosing one candidate (docs/protocol.md §8): most tests passed, then the
majority patch, then the fewest tokens.

Votes count patches by what they do, not how they are written: every touched
file's content after the patch, Python parsed and unparsed without comments
and docstrings, other files with whitespace collapsed. Hunk order, spacing,
comments and docstrings therefore never split a vote.
"""

from __future__ import annotations

import ast
import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cwm_agent import pyparse


def normalized_key(contents: Mapping[str, bytes | None]) -> str:
    """A short fingerprint of the tree a patch leaves (None: the file was deleted)."""
    digest = hashlib.sha256()
    for path in sorted(contents):
        data = contents[path]
        text = "<deleted>" if data is None else normalize(path, data.decode("utf-8", "replace"))
        digest.update(f"{path}\0{text}\0".encode())
    return digest.hexdigest()[:16]


def normalize(path: str, text: str) -> str:
    """Python parsed and unparsed without comments and docstrings (as Agentless
    normalises); any other text with its whitespace collapsed."""
    if path.endswith(".py"):
        try:
            tree = pyparse.parse(text)
        except SyntaxError:
            pass
        else:
            for node in ast.walk(tree):
                body = getattr(node, "body", None)
                if (
                    isinstance(
                        node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
                    )
                    and body
                    and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)
                ):
                    node.body = body[1:] or [ast.Pass()]
            return ast.unparse(tree)
    return " ".join(text.split())


@dataclass(frozen=True)
class Entry:
    """What selection needs of one eligible candidate."""

    index: int
    score: int
    key: str
    tokens: int


@dataclass(frozen=True)
class Decision:
    selected: int | None
    reason: str
    votes: dict[str, int]


def select_candidate(entries: Sequence[Entry]) -> Decision:
    """The best eligible candidate and, in words, which rule decided."""
    if not entries:
        return Decision(None, "no candidate submitted a patch that applies", {})
    votes = dict(Counter(entry.key for entry in entries))
    ranked = sorted(entries, key=lambda e: (-e.score, -votes[e.key], e.tokens, e.index))
    best = ranked[0]
    tied = [e for e in entries if e.score == best.score]
    if len(tied) == 1:
        reason = f"highest score ({best.score} tests passed)"
    else:
        peers = [e for e in tied if votes[e.key] == votes[best.key]]
        reason = f"{len(tied)} candidates tied at {best.score} tests passed; "
        if len(peers) < len(tied):
            reason += f"majority: its patch is shared by {votes[best.key]} candidates"
        else:
            fewest = [e for e in peers if e.tokens == best.tokens]
            reason += f"equal votes ({votes[best.key]}); fewest tokens ({best.tokens})"
            if len(fewest) > 1:
                reason += "; then the lowest candidate number"
    return Decision(best.index, f"candidate {best.index}: {reason}", votes)
