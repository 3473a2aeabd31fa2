"""The house rules of docs/architecture.md, checked on the source: no import circles, the pure
layers stay pure, the peer's rooms stay small."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "gossiplearn"
PURE = ("gossiplearn.gossip", "gossiplearn.crypto")
NOT_IN_PURE = ("trio", "libp2p", "gossiplearn.peer", "gossiplearn.cli", "gossiplearn.demo")
MAX_PEER_MODULE = 400  # lines
MAX_NODE_CLASS = 250  # lines


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module ``path`` imports at run time (imports under ``if TYPE_CHECKING`` do not
    count: they make no circle when the program runs)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            for alias in node.names:  # ``from package import module``
                if f"{node.module}.{alias.name}" in modules:
                    out.add(f"{node.module}.{alias.name}")
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    modules = _modules()
    graph = {
        name: {m for m in _imports(path, modules) if m in modules and m != name}
        for name, path in modules.items()
    }
    # a package's __init__ importing its own modules is not a circle of design
    graph = {k: {m for m in v if not m.startswith(k + ".")} for k, v in graph.items()}
    assert _cycles(graph) == []


def test_the_pure_layers_import_no_io_layer() -> None:
    modules = _modules()
    bad = {
        name: sorted(m for m in _imports(path, modules) if m.startswith(NOT_IN_PURE))
        for name, path in modules.items()
        if name.startswith(PURE)
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_peer_rooms_stay_small() -> None:
    peer = PACKAGE / "peer"
    sizes = {
        str(p.relative_to(peer)): len(p.read_text(encoding="utf-8").splitlines())
        for p in peer.rglob("*.py")
    }
    assert {k: n for k, n in sizes.items() if n > MAX_PEER_MODULE} == {}
    tree = ast.parse((peer / "node" / "node.py").read_text(encoding="utf-8"))
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Node"]
    assert node.end_lineno is not None
    assert node.end_lineno - node.lineno + 1 <= MAX_NODE_CLASS
