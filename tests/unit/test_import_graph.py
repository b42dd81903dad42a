"""The package's import graph: no import cycles (so no function-level import exists only to break
one), and the controller never loads libvirt or the sandbox: neither when it starts (a real
import in a subprocess) nor later (everything reachable from it, function-level imports included)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE_ROOT = REPO / "operator"
PACKAGES = ("failovervm", "failovervm_sandbox")  # the product, and the sandbox that imports it

LIBVIRT = frozenset({"libvirt", "libvirt_qemu", "libvirtaio"})
CONTROLLER = "failovervm.controller.main"

def _banned(module: str) -> bool:
    return module in LIBVIRT or module.startswith(("failovervm_sandbox", "failovervm.sandbox"))


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(p for package in PACKAGES for p in (SOURCE_ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(SOURCE_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (functions included), except in `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def import_graph(external: bool = False) -> dict[str, set[str]]:
    """module -> the package's modules it imports. `from pkg import name` counts as importing
    pkg.name when that is a module, else pkg itself. `external`: the top-level names of the other
    modules it imports instead (libvirt, kopf, ...)."""
    mods = modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if external:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if not (isinstance(node, ast.ImportFrom) and node.level):
                    graph[mod].update(n.split(".")[0] for n in names if n.split(".")[0] not in PACKAGES)
                continue
            if isinstance(node, ast.Import):
                targets = [owner(a.name) for a in node.names if a.name.split(".")[0] in PACKAGES]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                if base.split(".")[0] not in PACKAGES:
                    continue
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else owner(base) for a in node.names]
            graph[mod].update(t for t in targets if t and t != mod)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete cycle through the component's first module, for the failure message."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    graph = import_graph()
    assert "failovervm.controller.context" in graph["failovervm.controller.migrations"]
    assert "failovervm.nodehealth" in graph["failovervm.scheduling"]  # from .nodehealth import ...
    assert "failovervm.controller.main" in graph["failovervm.cli"]  # imported inside a function
    assert "failovervm.labels" in graph["failovervm"]


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(a_cycle(graph, c)) for c in found)


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert a_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_nothing_the_controller_can_import_reaches_libvirt_or_the_sandbox() -> None:
    graph, external = import_graph(), import_graph(external=True)
    leaks: list[tuple[str, str]] = []
    seen, todo = set(), [CONTROLLER]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        leaks += [(mod, m) for m in sorted(graph[mod] | external[mod]) if _banned(m)]
        todo += [m for m in graph[mod] if not _banned(m)]
    assert "failovervm.controller.vms" in seen and "failovervm.placement" in seen
    assert not leaks, f"the controller reaches libvirt or the sandbox through {leaks}"


def test_the_controller_never_imports_libvirt_or_the_sandbox() -> None:
    code = ("import sys, json, failovervm, failovervm.controller.main; "
            "print(json.dumps([failovervm.__file__, sorted(sys.modules)]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=REPO, timeout=120)
    package, loaded = json.loads(out.stdout)
    assert Path(package).resolve().parent == SOURCE_ROOT / "failovervm"  # this checkout's package
    assert "kopf" in loaded and CONTROLLER in loaded
    banned = [m for m in loaded if _banned(m)]
    assert not banned, f"importing the controller loads {banned}"
