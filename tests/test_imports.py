"""The package's import graph (issue 29, item 3): no module imports another's private helpers,
and no module is in an import cycle (imports inside functions count: a lazy import is still a
dependency).

Read from the source with `ast`, nothing imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "synth"


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """(module → the synth modules it imports, [(module, from, private name)])."""
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("synth"):
                    continue
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append((module, target, alias.name))
                    found = owner(f"{target}.{alias.name}") if f"{target}.{alias.name}" in modules else owner(target)
                    if found and found != module:
                        graph[module].add(found)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    found = owner(alias.name) if alias.name.startswith("synth") else None
                    if found and found != module:
                        graph[module].add(found)
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_another_modules_private_helpers():
    _, private = _imports()
    assert private == [], private


def test_the_package_has_no_import_cycle():
    graph, _ = _imports()
    assert graph["synth.stages.base"] >= {"synth.engines.pool"}  # the graph is read (lazy imports too)
    assert _cycles(graph) == []
    # and the check sees one: a module importing back one that imports it
    assert _cycles({**graph, "synth.engines.pool": graph["synth.engines.pool"] | {"synth.stages.base"}})


def test_no_library_internals_and_no_patched_objects():
    """Issue 29, item 4: synth uses Ray's and vLLM's public APIs only, and patches no
    library object (`grep -rn "_internal\\|__dict__\\[" synth/` finds nothing)."""
    found = [f"{f.relative_to(ROOT.parent)}:{n}: {line.strip()}"
             for f in sorted(ROOT.rglob("*.py"))
             for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
             if "_internal" in line or "__dict__[" in line]
    assert found == []


def test_locations_are_branched_on_in_storage_only():
    """Issue 29, item 3: a local directory and an object store differ only inside synth.storage
    (and in the build lock, whose two kinds are a lock file and a lease)."""
    found = [f"{f.relative_to(ROOT.parent)}:{n}"
             for f in sorted(ROOT.rglob("*.py")) if f.name != "storage.py" and f.name != "lock.py"
             for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if "is_remote(" in line]
    assert found == []
