"""The package's import graph has no cycle, between modules or between components.

Every import counts, also those inside functions and under `TYPE_CHECKING`: a
lazy import still ties two modules together, it only hides the knot. A
component is a top-level module or subpackage of `cwm_agent` (`swebench`,
`view`, `fix`, ...); a cycle between two of them means a lower one reaches up.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cwm_agent"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports, wherever the import statement sits."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return {target for target in found if target in known and target != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def component(name: str) -> str:
    return ".".join(name.split(".")[:2])


def component_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    result: dict[str, set[str]] = {}
    for source, targets in edges.items():
        node = component(source)
        result.setdefault(node, set()).update(
            component(t) for t in targets if component(t) not in (node, "cwm_agent")
        )
    return result


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            members: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def describe(found: Iterable[list[str]], edges: dict[str, set[str]]) -> str:
    lines = []
    for members in found:
        inside = set(members)
        arrows = [f"{s} -> {t}" for s in members for t in sorted(edges[s] & inside)]
        lines.append("; ".join(arrows))
    return "\n".join(lines)


def test_the_finder_sees_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    source = "def later():\n    from cwm_agent.b import thing\n"
    (tmp_path / "a.py").write_text(source)
    edges = {"cwm_agent.a": imports_of("cwm_agent.a", tmp_path / "a.py", {"cwm_agent.b"})}
    edges["cwm_agent.b"] = {"cwm_agent.a"}
    assert cycles(edges) == [["cwm_agent.a", "cwm_agent.b"]]


def test_relative_imports_resolve_to_the_package_modules(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("from . import sibling\nfrom ..other import x\n")
    known = {"cwm_agent.pkg.sibling", "cwm_agent.other", "cwm_agent.pkg.m"}
    assert imports_of("cwm_agent.pkg.m", tmp_path / "m.py", known) == {
        "cwm_agent.pkg.sibling",
        "cwm_agent.other",
    }


def test_no_import_cycle_between_modules() -> None:
    edges = graph()
    assert "cwm_agent.swebench.runner" in edges  # the walk found the package
    found = cycles(edges)
    assert not found, "import cycles between modules:\n" + describe(found, edges)


def test_no_import_cycle_between_components() -> None:
    edges = component_graph(graph())
    found = cycles(edges)
    assert not found, "import cycles between components:\n" + describe(found, edges)
