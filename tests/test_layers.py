"""The package's layout shows the flow, and imports run one way: data -> models -> methods, training, audit ->
report -> studies -> commands. A module may import from its own layer or a lower one, never a higher one, and no
modules import each other in a cycle. Imports inside functions count: a lazy import is still a dependency."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "obliviate"

# Lowest first. A module belongs to the longest prefix that names it.
LAYERS = [
    ("obliviate", "obliviate.errors", "obliviate.config", "obliviate.io", "obliviate.manifest", "obliviate.batching",
     "obliviate.progress", "obliviate.losses", "obliviate.distributed"),
    ("obliviate.data",),
    ("obliviate.models",),
    ("obliviate.audit", "obliviate.training", "obliviate.methods"),
    ("obliviate.report",),
    ("obliviate.studies", "obliviate.vision"),
    ("obliviate.commands", "obliviate.cli", "obliviate.__main__"),
]


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _exists(name: str) -> bool:
    path = ROOT.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or path.is_dir()


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in ROOT.rglob("*.py"):
        name, found = _module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("obliviate"):
                for alias in node.names:  # `from obliviate.x import y`: y may itself be a module
                    candidate = f"{node.module}.{alias.name}"
                    found.add(candidate if _exists(candidate) else node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("obliviate")}
        graph[name] = found - {name}
    return graph


def layer_of(module: str) -> int:
    best = None
    for index, names in enumerate(LAYERS):
        for prefix in names:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to tests/test_layers.py"
    return best[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{module} -> {target}" for module, targets in sorted(graph.items()) for target in sorted(targets)
            if target in graph and layer_of(target) > layer_of(module)]


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    order, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        order[node] = low[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in graph:
                continue
            if target not in order:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], order[target])
        if low[node] == order[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return cycles


def test_no_module_imports_a_higher_layer():
    upward = upward_imports(import_graph())
    assert not upward, "imports against the flow:\n" + "\n".join(upward)


def test_no_import_cycles():
    cycles = import_cycles(import_graph())
    assert not cycles, f"modules importing each other: {cycles}"


def test_the_checks_find_an_upward_import_and_a_cycle():
    graph = {"obliviate.data.benchmark": {"obliviate.studies.targets"}, "obliviate.studies.targets": set(),
             "obliviate.io": {"obliviate.manifest"}, "obliviate.manifest": {"obliviate.io"}}
    assert upward_imports(graph) == ["obliviate.data.benchmark -> obliviate.studies.targets"]
    assert import_cycles(graph) == [["obliviate.io", "obliviate.manifest"]]
    assert layer_of("obliviate.training.unlearn") == layer_of("obliviate.methods.npo")  # one layer, no cycle
