"""The import rules of DESIGN.md, read from the source (every import statement, lazy ones included):

* ``models`` imports none of ``training``, ``export``, ``service``; ``training`` and ``export`` never
  import ``service``; ``service`` never imports ``torch``, ``transformers``, ``training`` or ``export``;
* no import cycle among the project's modules.

(The subprocess checks that importing ``service`` / ``models`` loads no torch are in
tests/service/test_cli.py and tests/models/test_tasks.py.)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "training", "export", "service", "ropenlp")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Everything ``name`` imports (absolute names): ``from a.b import c`` is ``a.b.c`` when that is a module."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            for a in node.names:
                full = f"{base}.{a.name}"
                out.add(full if full in known else base)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _top(name: str) -> str:
    return name.split(".")[0]


# package -> top-level packages it must never import (``ropenlp`` itself, the version, is fine; its
# modules join the layers and sit above them all)
RULES = {
    "models": {"training", "export", "service"},
    "training": {"service", "export"},
    "export": {"service", "training"},
    "service": {"torch", "transformers", "training", "export"},
}
TORCH_FREE = ("models", "models.text", "models.spans", "models.bundle", "models.batches", "models.precisions",
              "models.card")  # the contracts service reads: no torch


def test_layers_import_one_way(graph) -> None:
    bad = [
        f"{mod} imports {imp}"
        for mod, imports in graph.items()
        for imp in imports
        if _top(imp) in RULES.get(_top(mod), ()) or (imp.startswith("ropenlp.") and _top(mod) != "ropenlp")
    ]
    bad += [f"{mod} imports {imp}" for mod in TORCH_FREE for imp in graph[mod]
            if _top(imp) in ("torch", "transformers")]
    assert not bad, "\n".join(bad)


def test_no_import_cycle(graph) -> None:
    """Tarjan's strongly connected components over the project's modules: every one of size 1."""
    nodes = set(graph)
    edges = {m: sorted(i for i in imps if i in nodes and i != m) for m, imps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_finder_finds_cycles(tmp_path) -> None:
    """The parser resolves ``from pkg import module`` to the module (else a cycle through it is missed)."""
    known = {"a", "a.b", "a.c"}
    (tmp_path / "b.py").write_text("from a import c\n")
    assert _imports("a.b", tmp_path / "b.py", known) == {"a.c"}


def test_training_loads_no_service() -> None:
    """At run time too: importing every training module loads nothing of ``service``."""
    names = sorted(n for n in _modules() if _top(n) == "training")
    code = (f"import importlib, sys; [importlib.import_module(n) for n in {names!r}]; "
            "bad = sorted(m for m in sys.modules if m == 'service' or m.startswith('service.')); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
