"""preflab's import graph: its floors, its arrows, and whatever breaks the layering.

    python scripts/layers.py            # floors, arrows, circles, arrows up, largest modules
    python scripts/layers.py OTHER/preflab   # the same for another checkout (an older commit)

Reads every ``import`` in ``preflab/`` (top-level and deferred ones inside functions alike),
without importing anything. A node is a package (``preflab.data``) or a top-level module
(``preflab.cli``); an arrow is one node importing another. Each package's docstring declares
what it may import (a line ``May import: a, b.``); a node's floor is 1 + the highest floor of
what it declares (``errors``, declaring nothing, is floor 1), and an arrow up is an import of a
node that is not on a lower floor. ``tests/test_layers.py`` holds the counts of circles, arrows
up and commands importing commands at 0; docs/architecture.md draws the floors.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "preflab"
TOP = {"cli": ("errors", "runtime", "algorithms", "commands"), "errors": ()}
"""Top-level modules and what each may import (``cli`` runs the commands and the algorithms, importing them by name when one runs)."""


@dataclass
class Graph:
    modules: dict[str, Path]
    imports: dict[str, set[str]]
    """module -> the preflab modules it imports"""
    declared: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """node -> the nodes it may import"""

    def node(self, module: str) -> str:
        return module.split(".")[1] if "." in module else module

    @property
    def nodes(self) -> list[str]:
        return sorted({self.node(m) for m in self.modules if m != "preflab"})

    def arrows(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for module, targets in self.imports.items():
            for target in targets:
                a, b = self.node(module), self.node(target)
                if a != b and module != "preflab":
                    out[a].add(b)
        return out

    def floors(self) -> dict[str, int]:
        """Each node's floor from what it declares (a declared circle raises ValueError)."""
        floors: dict[str, int] = {}

        def floor(node: str, path: tuple[str, ...] = ()) -> int:
            if node in path:
                raise ValueError(f"declared layers form a circle: {' -> '.join(path + (node,))}")
            if node not in floors:
                below = [floor(n, path + (node,)) for n in self.declared.get(node, ())]
                floors[node] = 1 + max(below, default=0)
            return floors[node]

        for node in self.nodes:
            floor(node)
        return floors

    def arrows_up(self) -> list[tuple[str, str]]:
        floors = self.floors()
        return sorted((a, b) for a, targets in self.arrows().items() for b in targets
                      if floors[b] >= floors[a])

    def undeclared(self) -> list[tuple[str, str]]:
        return sorted((a, b) for a, targets in self.arrows().items() for b in targets
                      if b not in self.declared.get(a, ()))

    def circles(self) -> list[list[str]]:
        """Import circles between modules (strongly connected sets of more than one)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []

        def visit(v: str) -> None:
            index[v] = low[v] = len(index)
            stack.append(v)
            on_stack.add(v)
            for w in sorted(self.imports.get(v, ())):
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    found.append(sorted(group))

        sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
        for module in sorted(self.modules):
            if module not in index:
                visit(module)
        return found

    def lines(self) -> list[tuple[str, int]]:
        return sorted(((m, len(p.read_text().splitlines())) for m, p in self.modules.items()),
                      key=lambda x: -x[1])


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(module: str, path: Path, node: ast.AST, modules: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            keep = len(parts) - node.level + (1 if path.name == "__init__.py" else 0)
            base = ".".join(parts[:keep] + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                 for a in node.names]
    out = []
    for name in names:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in modules and name != "preflab":
            out.append(name)
    return out


def read(package: Path = PACKAGE) -> Graph:
    modules = {_module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}
    imports: dict[str, set[str]] = {}
    declared: dict[str, tuple[str, ...]] = {name: deps for name, deps in TOP.items()}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        imports[module] = {t for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                           for t in _targets(module, path, n, modules) if t != module}
        if path.name == "__init__.py" and module.count(".") == 1:
            doc = ast.get_docstring(tree) or ""
            match = re.search(r"^May import: (.*?)\.$", doc, re.M | re.S)
            if match is None:
                declared[module.split(".")[1]] = None  # type: ignore[assignment]
                continue
            text = re.sub(r"\(.*?\)", "", match.group(1))
            declared[module.split(".")[1]] = tuple(
                w.strip() for w in text.split(",") if re.fullmatch(r"[a-z_]+", w.strip()))
    return Graph(modules, imports, declared)


def commands_importing_commands(graph: Graph, commands: dict[str, str]) -> list[tuple[str, str]]:
    """(command module, command module it imports) for the modules ``preflab <cmd>`` runs."""
    mains = set(commands.values())
    return sorted((m, t) for m in mains for t in graph.imports.get(m, ()) if t in mains and t != m)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    graph = read(Path(args[0]).resolve() if args else PACKAGE)
    arrows = graph.arrows()
    print(f"{len(graph.nodes)} nodes (packages and top-level modules), "
          f"{sum(map(len, arrows.values()))} arrows")
    if all(graph.declared.get(n) is not None for n in graph.nodes):
        floors = graph.floors()
        print(f"{max(floors.values())} floors")
        for level in range(max(floors.values()), 0, -1):
            print(f"  floor {level}: {', '.join(n for n in graph.nodes if floors[n] == level)}")
    else:
        print("floors: not every package declares what it may import")
    print(f"circles: {graph.circles() or 0}")
    if all(graph.declared.get(n) is not None for n in graph.nodes):
        print(f"arrows up: {graph.arrows_up() or 0}")
        print(f"imports not declared: {graph.undeclared() or 0}")
    print("largest modules: " + ", ".join(f"{m} {n}" for m, n in graph.lines()[:5]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
