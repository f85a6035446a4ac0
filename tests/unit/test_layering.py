"""The import graph of nessa/, services/ and trainer/: layers point one way and there is no cycle.

The graph is read with ``ast`` (top-level and function-local imports; imports under ``if TYPE_CHECKING:`` count
for the layer rules but not for cycles, since they never run). ``from pkg import name`` is an edge to ``pkg``
(its ``__init__`` runs and must already hold ``name``) and, when ``pkg.name`` is a module, to it as well; that is
how a submodule importing through its own package's ``__init__`` shows up as a cycle.

Rules (DESIGN §3): the ``nessa`` library (everything under nessa/ but the CLI, the composition root) never reaches
``nessa.services`` or ``nessa.trainer``; ``nessa.selection`` never reaches gRPC; ``nessa.store`` never reaches
``nessa.selection``. "Reaches" is transitive over our own modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Source directories and the package name each is installed as (pyproject's package-dir).
SOURCES = {"nessa": "nessa", "services": "nessa.services", "trainer": "nessa.trainer"}
GENERATED = ("nessa.v1",)
GRPC = ("grpc", "grpc_health", "grpc_reflection", "grpc_status")


@dataclass
class Graph:
    """Modules → imported names; ``edges`` holds every import that runs, ``typing_edges`` the type-only ones."""

    modules: dict[str, Path] = field(default_factory=dict)
    packages: set[str] = field(default_factory=set)
    edges: dict[str, set[str]] = field(default_factory=dict)
    typing_edges: dict[str, set[str]] = field(default_factory=dict)

    def internal(self, name: str) -> str | None:
        """The longest module of ours that ``name`` is or lies in, else ``None``."""
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            candidate = ".".join(parts[:i])
            if candidate in self.modules:
                return candidate
        return None

    def all_edges(self, module: str) -> set[str]:
        return self.edges.get(module, set()) | self.typing_edges.get(module, set())

    def reach(self, start: str) -> dict[str, list[str]]:
        """Every name reachable from ``start`` (ours and external) → one import path to it."""
        paths: dict[str, list[str]] = {start: [start]}
        todo = [start]
        while todo:
            here = todo.pop()
            for target in sorted(self.all_edges(here)):
                if target in paths:
                    continue
                paths[target] = [*paths[here], target]
                if target in self.modules:
                    todo.append(target)
        return paths


def module_name(path: Path, root: Path, package: str) -> tuple[str, bool]:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join([package, *parts]) if parts else package, is_package


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``if TYPE_CHECKING:`` blocks."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
            if name == "TYPE_CHECKING":
                for inner in node.body:
                    for sub in ast.walk(inner):
                        if isinstance(sub, ast.Import | ast.ImportFrom):
                            found.add(id(sub))
    return found


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[ast.AST, str, tuple[str, ...]]]:
    """(node, imported module, names) for every import statement, relative ones resolved."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node, target, tuple(a.name for a in node.names)


def build_graph(sources: dict[Path, str]) -> Graph:
    """The import graph of the trees ``sources`` (directory → package name it is installed as)."""
    graph = Graph()
    files: dict[str, tuple[Path, bool]] = {}
    for root, package in sources.items():
        for path in sorted(root.rglob("*.py")):
            name, is_package = module_name(path, root, package)
            files[name] = (path, is_package)
            graph.modules[name] = path
            if is_package:
                graph.packages.add(name)
    for name, (path, is_package) in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        typing_only = _type_checking_nodes(tree)
        for node, target, names in _imports(tree, name, is_package):
            if target == "__future__":
                continue
            bucket = graph.typing_edges if id(node) in typing_only else graph.edges
            out = bucket.setdefault(name, set())
            resolved = graph.internal(target)
            out.add(resolved if resolved is not None else target)
            for imported in names:
                sub = f"{target}.{imported}"
                if sub in graph.modules:
                    out.add(sub)
        for bucket in (graph.edges, graph.typing_edges):
            bucket.get(name, set()).discard(name)
    return graph


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components of the runtime edges between our modules, size > 1 only."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    def successors(v: str) -> Iterable[str]:
        return sorted(t for t in graph.edges.get(v, set()) if t in graph.modules)

    for root in sorted(graph.modules):
        if root in index:
            continue
        # iterative Tarjan: (node, iterator over successors)
        work: list[tuple[str, Iterator[str]]] = []
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work.append((root, iter(successors(root))))
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(successors(w))))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def violations(graph: Graph) -> list[str]:
    """Every layer rule broken, one line each with the import path that breaks it."""
    problems: list[str] = []

    def within(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    rules: list[tuple[str, Iterable[str], tuple[str, ...]]] = [
        ("the nessa library", _library(graph), ("nessa.services", "nessa.trainer", "nessa.cli")),
        (
            "nessa.selection",
            (m for m in graph.modules if within(m, "nessa.selection")),
            (*GRPC, *(m for m in graph.modules if m.endswith("_grpc"))),
        ),
        ("nessa.store", (m for m in graph.modules if within(m, "nessa.store")), ("nessa.selection",)),
    ]
    for layer, starts, forbidden in rules:
        for start in sorted(starts):
            for target, path in graph.reach(start).items():
                if any(within(target, f) for f in forbidden):
                    problems.append(f"{layer}: {' -> '.join(path)}")
                    break
    return problems


def _library(graph: Graph) -> list[str]:
    return [
        m
        for m in graph.modules
        if (m == "nessa" or m.startswith("nessa."))
        and not any(m == p or m.startswith(p + ".") for p in ("nessa.cli", "nessa.services", "nessa.trainer"))
    ]


@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph({ROOT / src: package for src, package in SOURCES.items()})


def test_the_graph_sees_every_module_and_function_local_imports(graph: Graph) -> None:
    assert "nessa.proxy.engine" in graph.modules
    assert "nessa.services.storage.server" in graph.modules
    assert "nessa.trainer.config" in graph.modules
    # engine.py names its engines by import path; the daemon reaches the OpenCL one through the pool.
    assert "nessa.proxy.graph" in graph.edges["nessa.proxy.opencl_engine"]
    assert "nessa.services.storage.config" in graph.reach("nessa.cli")


def test_no_import_cycles(graph: Graph) -> None:
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles (strongly connected components):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_lower_layers_never_import_higher_ones(graph: Graph) -> None:
    problems = violations(graph)
    assert not problems, "layer rules broken:\n" + "\n".join(problems)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_the_checks_find_a_cycle_through_a_package_init_and_a_broken_layer(tmp_path: Path) -> None:
    # The shape of the store's old cycle: __init__ imports reader, reader imports lmdbenv through the package.
    _write(
        tmp_path / "nessa",
        {
            "__init__.py": "",
            "store/__init__.py": "from nessa.store.reader import open_dataset\n",
            "store/lmdbenv.py": "",
            "store/reader.py": "from nessa.store import lmdbenv\n\ndef open_dataset():\n    pass\n",
            "selection/__init__.py": "",
            "selection/base.py": "def f():\n    import grpc\n",  # function-local
            "proxy/__init__.py": "",
            "proxy/engine.py": "def load():\n    from . import cuda_engine\n",
            "proxy/cuda_engine.py": "from .engine import load\n",
            "proxy/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from nessa.trainer import x\n",
        },
    )
    _write(tmp_path / "trainer", {"__init__.py": "", "x.py": ""})
    g = build_graph({tmp_path / "nessa": "nessa", tmp_path / "trainer": "nessa.trainer"})
    cycles = strongly_connected(g)
    assert ["nessa.store", "nessa.store.reader"] in cycles
    assert ["nessa.proxy.cuda_engine", "nessa.proxy.engine"] in cycles
    problems = violations(g)
    assert "nessa.selection: nessa.selection.base -> grpc" in problems
    assert "the nessa library: nessa.proxy.typed -> nessa.trainer" in problems
    # The fix the real store uses: import the submodule as a submodule.
    fixed_reader = "import nessa.store.lmdbenv as lmdbenv\n\ndef open_dataset():\n    pass\n"
    _write(tmp_path / "nessa", {"store/reader.py": fixed_reader})
    fixed = build_graph({tmp_path / "nessa": "nessa", tmp_path / "trainer": "nessa.trainer"})
    assert ["nessa.store", "nessa.store.reader"] not in strongly_connected(fixed)
