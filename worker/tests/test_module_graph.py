"""The package's import graph has no cycles, counting imports made only for type checking: each module
can be read (and imported) after the ones it names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lathe_worker"


def _module_name(file: Path) -> str:
    parts = list(file.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in the file), including the packages on the way
    (importing `a.b.c` runs `a.b` too), excluding its own parent packages."""
    raw: dict[str, set[str]] = {}
    for file in PACKAGE.rglob("*.py"):
        name = _module_name(file)
        package = name if file.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                targets |= {target} | {f"{target}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lathe_worker"):
                targets |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("lathe_worker")}
        raw[name] = targets
    graph: dict[str, set[str]] = {}
    for name, targets in raw.items():
        prefixes = {".".join(t.split(".")[:k]) for t in targets for k in range(2, t.count(".") + 2)}
        graph[name] = {p for p in prefixes if p in raw and p != name and not name.startswith(p + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert "lathe_worker.models.transformer" in graph["lathe_worker.sampler"]  # the scan sees imports at all
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_lora_needs_nothing_of_the_models():
    """`lora.py` takes any model with `lora_targets()` (`HasLoraTargets`); the model imports it, not back."""
    graph = import_graph()
    assert not any(dep.startswith("lathe_worker.models") for dep in graph["lathe_worker.lora"])
    assert "lathe_worker.lora" in graph["lathe_worker.models.transformer"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
