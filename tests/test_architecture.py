"""The dependency graph of ``src/cmrseg``, read from the source: the layers below, each
importing only from the ones under it (no arrow runs back up, and the two packages of a layer
know nothing of each other), no import cycle, and no library module imports the command line.

    cli, __main__                       the command line
    pipelines                           reproduce, demo, the training scheduler
    training | evaluation               training runs | reports of predictions against truth
    inference                           predictor, ensembles, cmrseg segment, QC, report
    data | models                       readers, writers, discovery, datasets | networks, centred crops
    measures                            clinical measures, metrics, topology, slice levels
    base                                errors, atomic writes, devices, labels, checkpoints, figures
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle():
    graph = _graph()
    assert len(graph) > 30
    # a package importing its own submodules (its __init__ re-exporting them) is not a cycle
    pruned = {m: {n for n in deps if not (m.startswith(n + ".") and n in graph)} for m, deps in graph.items()}
    assert _cycle(pruned) is None, " -> ".join(_cycle(pruned))


def test_only_the_entry_points_import_the_command_line():
    importers = sorted(m for m, deps in _graph().items() if "cmrseg.cli" in deps)
    assert importers == ["cmrseg.__main__"], importers


#: package -> layer (module docstring); a module not named here is in the base layer
LAYERS = {"measures": 1, "data": 2, "models": 2, "inference": 3, "training": 4, "evaluation": 4, "pipelines": 5,
          "cli": 6}


def _layer(module: str) -> tuple[int, str]:
    """(layer, package) of ``cmrseg.<package>...``; base modules are their own package."""
    package = module.split(".")[1] if "." in module else ""
    package = "cli" if package == "__main__" else package  # the entry point is the command line's
    return LAYERS.get(package, 0), package


def test_no_import_runs_back_up_the_layers():
    upward = []
    for m, deps in _graph().items():
        (layer, package) = _layer(m)
        for d in deps:
            (dep_layer, dep_package) = _layer(d)
            if dep_package != package and (dep_layer > layer or (dep_layer == layer and layer > 0)):
                upward.append(f"{m} -> {d}")
    assert not upward, upward


def test_the_layers_are_the_packages_there_are():
    packages = {p.parent.relative_to(SRC / "cmrseg").parts[0] for p in (SRC / "cmrseg").rglob("*.py")
                if p.parent != SRC / "cmrseg"}
    assert packages - {"configs", "weights"} <= set(LAYERS), packages


def _functions():
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def test_functions_fit_on_a_screen():
    """Every function in src/ is at most 50 lines; the command line's flat argument table aside."""
    long = sorted((n.end_lineno - n.lineno + 1, f"{p.relative_to(SRC)}:{n.name}") for p, n in _functions()
                  if n.end_lineno - n.lineno + 1 > 50 and not (p.name == "cli.py" and n.name == "build_parser"))
    assert not long, long


def test_library_modules_import_cmrseg_at_the_top():
    """Imports of cmrseg modules inside functions hide the dependency graph: only cli.py has
    them (each command imports what it runs, so ``cmrseg --help`` starts fast)."""
    inner = []
    for path, fn in _functions():
        if path.name == "cli.py":
            continue
        for n in ast.walk(fn):
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("cmrseg"):
                inner.append(f"{path.relative_to(SRC)}:{fn.name} imports {n.module}")
    assert not inner, inner


def test_no_module_uses_another_ones_private_names():
    """A name with a leading underscore is its module's own: no other module of src/ imports it."""
    private = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cmrseg"):
                private += [f"{path.relative_to(SRC)} imports {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert not private, private
