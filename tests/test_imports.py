"""Every tagger module imports, and the module import graph is acyclic.

The graph is read from the source with `ast`, function-level (lazy) imports included: a
lazy import hides a cycle from the interpreter but not from a reader. An edge A -> B
is an explicit `import B` / `from B import x` in A (x counts as the module B.x when it
is one); the implicit import of a package's __init__ by its submodules is not an edge.
"""
import ast
import importlib
from pathlib import Path

import pytest

import tagger

ROOT = Path(tagger.__file__).resolve().parent


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@pytest.mark.parametrize("name", sorted(module_names()))
def test_every_module_imports(name):
    if name.startswith("tagger.ops.cuda") or name == "tagger.ops._cuda_kernels":
        pytest.importorskip("numba.cuda")
    importlib.import_module(name)


def test_the_module_import_graph_is_acyclic():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    edges = graph()
    assert "tagger.data.types" in edges["tagger.data"]  # relative and absolute imports are both read
    assert "tagger.layers.crf" in edges["tagger.layers"]


def test_the_model_does_not_reach_io_predict_or_training():
    edges = graph()
    for mod in ("tagger.io", "tagger.predict", "tagger.training"):
        assert mod not in edges["tagger.models"]
    for cmd in ("debug_data", "summary", "evaluate", "predict"):
        assert "tagger.training" not in edges[f"tagger.cli.{cmd}"]
