"""The house's import layering, read from the source (issue 20 point 8): arrows point down only.

The package's import graph is built from every ``import`` in ``aquin_monitor/`` (function-level imports
included: a lazy import is still an arrow; imports under ``if TYPE_CHECKING:`` are left out: they never
run). :data:`LAYERS` lists the module groups from the top of the house to the ground floor; a module
may import its own layer and the layers below, never one above. Further rules: no circles; ``signals/``
imports nothing outside itself; nothing imports ``callbacks/`` (but the package's ``__init__`` and
``callbacks/`` itself); sinks never import a computation module.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "aquin_monitor"

#: Module groups, top of the house first. A name covers the module and, ending in ".", its submodules.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "entry points",
        (
            "aquin_monitor",
            "aquin_monitor.__main__",
            "aquin_monitor.callbacks",
            "aquin_monitor.callbacks.",
            "aquin_monitor.cli",
            "aquin_monitor.cli_tools",
            "aquin_monitor.sae.cli",
            "aquin_monitor.sae.analysis_cli",
            "aquin_monitor.sae.page_cli",
            "aquin_monitor.sae.convert_cli",
            "aquin_monitor.sae.verb_inputs",
        ),
    ),
    ("pages", ("aquin_monitor.report",)),
    ("run core", ("aquin_monitor.monitor", "aquin_monitor.snapshot_runner", "aquin_monitor.losses")),
    (
        "parts",
        (
            "aquin_monitor.alarms",
            "aquin_monitor.capture",
            "aquin_monitor.sharded_gradients",
            "aquin_monitor.snapshot_record",
            "aquin_monitor.verdict",
            "aquin_monitor.embedding_cache",
            "aquin_monitor.embed",
            "aquin_monitor.corpus_geometry",
            "aquin_monitor.sae",
            "aquin_monitor.sae.",
        ),
    ),
    (
        "inputs and outputs",
        (
            "aquin_monitor.encoders",
            "aquin_monitor.data",
            "aquin_monitor.store",
            "aquin_monitor.search",
            "aquin_monitor.sinks",
            "aquin_monitor.sinks.",
        ),
    ),
    ("signals", ("aquin_monitor.signals", "aquin_monitor.signals.")),
    (
        "ground floor",
        (
            "aquin_monitor.metric_registry",
            "aquin_monitor.atomic",
            "aquin_monitor.jsonio",
            "aquin_monitor.snapshot_keys",
            "aquin_monitor.rows",
            "aquin_monitor.plots",
            "aquin_monitor._optional",
            "aquin_monitor.failsoft",
            "aquin_monitor.runlock",
            "aquin_monitor.distributed",
            "aquin_monitor.progress",
        ),
    ),
)
#: What sinks may never import: the modules that compute.
COMPUTATION = (
    "aquin_monitor.signals",
    "aquin_monitor.monitor",
    "aquin_monitor.snapshot_runner",
    "aquin_monitor.snapshot_record",
    "aquin_monitor.alarms",
    "aquin_monitor.capture",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    nodes: set[int] = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(test):
            nodes |= {id(child) for child in ast.walk(node)}
    return nodes


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """``{module: {imported package module: line of the first import}}`` (modules outside the package left out)."""
    files = {module_name(path): path for path in sorted(package.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        skip = _type_checking_nodes(tree)
        arrows: dict[str, int] = {}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here.split(".")[: len(here.split(".")) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in files else source for a in node.names]
            for target in targets:
                if target.split(".")[0] == "aquin_monitor" and target != module:
                    arrows[target] = min(arrows.get(target, node.lineno), node.lineno)
        graph[module] = arrows
    return graph


def layer_of(module: str) -> int:
    found = [
        i
        for i, (_, names) in enumerate(LAYERS)
        for name in names
        if module == name or (name.endswith(".") and module.startswith(name))
    ]
    if not found:
        raise AssertionError(f"{module} is in no layer of tests/test_layering.py: add it to LAYERS")
    return found[0]


def circles(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    return found


def upward_arrows(graph: dict[str, dict[str, int]]) -> list[str]:
    """One line per import of a higher layer: ``file:line: a (layer) imports b (higher layer)``."""
    lines = []
    for module, arrows in graph.items():
        for target, line in arrows.items():
            if layer_of(target) < layer_of(module):
                lines.append(
                    f"{_file(module)}:{line}: {module} ({LAYERS[layer_of(module)][0]}) imports "
                    f"{target} ({LAYERS[layer_of(target)][0]}), a layer above"
                )
    return sorted(lines)


def _file(module: str) -> str:
    path = PACKAGE.parent / module.replace(".", "/")
    return str((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(PACKAGE.parent))


GRAPH = import_graph()


def test_the_graph_reads_real_imports():
    """The graph sees relative, absolute and function-level imports, and leaves TYPE_CHECKING ones out."""
    assert "aquin_monitor.signals.drift" in GRAPH["aquin_monitor.snapshot_record"]  # from .signals.drift import ...
    assert "aquin_monitor.sae.page" in GRAPH["aquin_monitor.callbacks.run_pages"]  # inside a function
    assert "aquin_monitor.snapshot_runner" not in GRAPH["aquin_monitor.callbacks.evaluator"]  # under TYPE_CHECKING
    assert circles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [{"a", "b", "c"}]


def test_every_module_has_a_layer_and_no_arrow_points_up():
    assert upward_arrows(GRAPH) == []


def test_no_circle_at_all():
    assert circles(GRAPH) == []


def room(module: str) -> str:
    """The room of a module: ``signals/``, ``sinks/``, ``sae/`` and ``callbacks/`` are one room each."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 and parts[1] in {"signals", "sinks", "sae", "callbacks"} else module


def test_no_circle_between_rooms():
    """No two rooms import each other (the sae verbs import the CLI toolkit, which imports nothing of sae/)."""
    rooms: dict[str, dict[str, int]] = {}
    for module, arrows in GRAPH.items():
        for target, line in arrows.items():
            if room(target) != room(module):
                rooms.setdefault(room(module), {}).setdefault(room(target), line)
    assert circles(rooms) == []


def test_signals_import_nothing_outside_signals():
    outside = [
        f"{_file(m)}:{line}: {t}"
        for m, arrows in GRAPH.items()
        if m.startswith("aquin_monitor.signals")
        for t, line in arrows.items()
        if not t.startswith("aquin_monitor.signals")
    ]
    assert outside == []


def test_nothing_imports_the_callbacks():
    allowed = {"aquin_monitor"}
    importers = [
        f"{_file(m)}:{line}: {t}"
        for m, arrows in GRAPH.items()
        if m not in allowed and not m.startswith("aquin_monitor.callbacks")
        for t, line in arrows.items()
        if t.startswith("aquin_monitor.callbacks")
    ]
    assert importers == []


def test_sinks_never_import_computation():
    computing = [
        f"{_file(m)}:{line}: {t}"
        for m, arrows in GRAPH.items()
        if m.startswith("aquin_monitor.sinks")
        for t, line in arrows.items()
        if t.startswith(COMPUTATION)
    ]
    assert computing == []


def test_ground_floor_imports_only_the_ground_floor():
    ground = len(LAYERS) - 1
    upward = [
        f"{_file(m)}:{line}: {t}"
        for m, arrows in GRAPH.items()
        if layer_of(m) == ground
        for t, line in arrows.items()
        if layer_of(t) != ground
    ]
    assert upward == []


def test_an_upward_arrow_is_named_with_its_file_and_line():
    graph = {"aquin_monitor.plots": {"aquin_monitor.report": 12}, "aquin_monitor.report": {}}
    assert upward_arrows(graph) == [
        "aquin_monitor/plots.py:12: aquin_monitor.plots (ground floor) imports aquin_monitor.report (pages), "
        "a layer above"
    ]
