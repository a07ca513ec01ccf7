"""The import graph runs one way: CLI -> evaluation/talk -> pipelines -> model parts -> audio/text
utilities, with no cycles, and only the layer that wires pipelines together imports `baselines`."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_graph() -> dict[str, set[str]]:
    """Each module of omni_cli and baselines -> the project modules it imports (anywhere in it,
    function-level imports included)."""
    files = {}
    for package in ("omni_cli", "baselines"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        graph[name] = {t for t in targets if t in files and t != name and t not in ("omni_cli", "baselines")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph = _module_graph()
    assert len(graph) > 30 and "omni_cli.cli" in graph
    assert _cycle(graph) is None


def test_layers():
    graph = _module_graph()
    importers = {m for m, targets in graph.items() if any(t.startswith("baselines") for t in targets)}
    assert importers == {"omni_cli.pipelines"}  # the library's core does not import the cascade baseline
    cli = {m for m in graph if m.startswith("omni_cli.cli")} | {"omni_cli.__main__"}
    assert {m for m in graph if m not in cli and graph[m] & cli} == set()  # nothing below the CLI imports it
    assert not any(t.startswith("omni_cli.e2e.train") for t in graph["omni_cli.e2e.defaults"])  # config without training code
    for low in ("omni_cli.audio", "omni_cli.text", "omni_cli.events", "omni_cli.metrics", "omni_cli.errors"):
        assert not graph[low] & {"omni_cli.pipelines", "omni_cli.evaluate", "omni_cli.talk", "omni_cli.llm", "omni_cli.asr"}, low
